from trustplane.cli.main import main

main()
