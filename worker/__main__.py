from worker.commands.cli import main

main()
