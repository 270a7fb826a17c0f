from bookingsync.cli import main

main()
