"""`python -m keel.connectors outbox run ...`: the connectors' commands without the `keel` script
(the local stack runs services this way, with the virtualenv's interpreter)."""

from __future__ import annotations

import sys

import typer

from keel.connectors.archive_cli import archive_app
from keel.connectors.outbox_cli import outbox_app
from keel.connectors.pgsink_cli import pgsink_app
from keel.connectors.webhooks_cli import webhooks_app
from keel.errors import KeelError

app = typer.Typer(add_completion=False, no_args_is_help=True)
app.add_typer(outbox_app)
app.add_typer(webhooks_app)
app.add_typer(pgsink_app)
app.add_typer(archive_app)


def main() -> None:
    try:
        app()
    except KeelError as exc:
        sys.stderr.write(f"keel: error: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
