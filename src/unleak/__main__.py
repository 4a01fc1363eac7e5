"""`python -m unleak`: the `unleak` command."""

from unleak.cli import main

main()
