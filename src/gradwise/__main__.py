from gradwise.cli import main

main()
