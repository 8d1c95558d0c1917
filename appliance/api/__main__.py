from appliance.api.main import main

main()
