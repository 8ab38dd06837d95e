"""`python -m keel.consumers worker ...`: the job commands without the `keel` script (the local
stack runs services this way, with the virtualenv's interpreter)."""

from __future__ import annotations

import sys

from keel.consumers.cli import jobs_app
from keel.errors import KeelError


def main() -> None:
    try:
        jobs_app()
    except KeelError as exc:
        sys.stderr.write(f"keel: error: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
