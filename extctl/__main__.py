from extctl.cli import main

main()
