from studioctl.cli.app import main

main()
