"""`python -m keel.producers ...`: the same commands as `keel ingest|keys|demo`."""

from __future__ import annotations

import typer

from keel.producers.cli import demo, ingest, keys_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
app.command("ingest")(ingest)
app.command("demo")(demo)
app.add_typer(keys_app, name="keys")

if __name__ == "__main__":
    app()
