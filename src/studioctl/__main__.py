from studioctl.cli.main import main

main()
