from bookmatch.cli import main

main()
