"""`python -m streams worker` (the local stack runs workers this way)."""

from streams.cli import main

main()
