"""One way to make a `keel` command group, for the core and the components alike.

Outside `keel.cli` on purpose: importing that package mounts every component's commands,
so a component importing it from its own CLI module would import itself half-made."""

from __future__ import annotations

import typer


def command_group(name: str, help: str) -> typer.Typer:
    """A typer app with Keel's conventions: `--help` when called bare, no shell-completion
    options, and plain tracebacks (errors the user should see are one-line KeelErrors)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
