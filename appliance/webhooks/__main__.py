from appliance.webhooks.process import main

main()
