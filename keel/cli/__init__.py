"""The `keel` command. Core subcommands live here; components add theirs through the
`keel.commands` entry point (a typer app, mounted under the entry's name)."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from pydantic import ValidationError

from keel.cli.acls import acls_app
from keel.cli.broker import broker_app
from keel.cli.dlq import dlq_app
from keel.cli.doctor import doctor
from keel.cli.lag import lag
from keel.cli.stack import register_stack_commands
from keel.cli.topics import topics_app
from keel.command_group import command_group
from keel.errors import KeelError

app = command_group("keel", "Keel: an event-driven streaming backbone on Apache Kafka.")
app.add_typer(acls_app, name="acls")
app.add_typer(broker_app, name="broker")
app.add_typer(dlq_app, name="dlq")
app.command(name="doctor")(doctor)
app.command(name="lag")(lag)
app.add_typer(topics_app, name="topics")
register_stack_commands(app)


def _mount_components() -> None:
    for entry in entry_points(group="keel.commands"):
        sub = entry.load()
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=entry.name)
        else:  # a plain function: one command
            app.command(name=entry.name)(sub)


_mount_components()


def main() -> None:
    """Entry point: a KeelError becomes one line on stderr and exit status 1."""
    try:
        app()
    except KeelError as exc:
        sys.stderr.write(f"keel: error: {exc}\n")
        sys.exit(1)
    except ValidationError as exc:  # a KEEL_* setting with a wrong value
        problems = "; ".join(
            f"KEEL_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        sys.stderr.write(f"keel: error: invalid setting: {problems}\n")
        sys.exit(2)
