"""`python -m keel.streams worker` (the local stack runs workers this way)."""

from keel.streams.cli import main

main()
