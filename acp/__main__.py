from acp.cli import main

main()
