from appliance.scripting.main import main

main()
