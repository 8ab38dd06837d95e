"""`keel acls plan|apply`: the principals and ACLs file (`acls.toml`) against the cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from keel.acls import DEFAULT_FILE, AclPlan, AclsError, apply, load_acls, plan
from keel.command_group import command_group
from keel.kafka import SILENT_LOG, make_admin, naming_brokers
from keel.settings import get_settings

# Not 2: typer exits 2 on a usage error, and a drift check must tell the two apart.
EXIT_PENDING = 3

acls_app = command_group(
    "acls",
    "Principals and ACLs as code: compare acls.toml with the cluster (plan) and make it so "
    "(apply).",
)

File = Annotated[
    Path, typer.Option("--file", "-f", help="The principals and ACLs file.", dir_okay=False)
]
Timeout = Annotated[
    float, typer.Option(help="Seconds to wait for the brokers at each step.", min=1)
]


def _plan(file: Path, timeout: float) -> AclPlan:
    declared = load_acls(file)  # a bad file fails before any connection
    settings = get_settings()
    with naming_brokers(settings):
        return plan(make_admin(settings, logger=SILENT_LOG), declared, timeout)


def _show(planned: AclPlan) -> None:
    for line in planned.lines():
        typer.echo(line)
    typer.echo(planned.summary())


@acls_app.command(
    "plan", short_help="What apply would change; exit 3 when changes are pending (CI drift check)."
)
def plan_command(
    file: File = DEFAULT_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as one JSON object.")] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Show the ACLs apply would add (+) and, for the principals the file declares, the ones it
    would remove (-). Principals the file does not name are counted as unmanaged and never
    touched. Exit status 0 when the cluster matches the file, 3 when changes are pending, 1 for
    a bad file, an unreachable broker or a principal not allowed to read ACLs."""
    planned = _plan(file, timeout)
    if as_json:
        typer.echo(json.dumps(planned.to_dict()))
    else:
        _show(planned)
    if planned.pending:
        raise typer.Exit(EXIT_PENDING)


@acls_app.command("apply", short_help="Print the plan, then add and remove ACLs.")
def apply_command(
    file: File = DEFAULT_FILE,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Apply without asking (needed off a terminal).")
    ] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Print the plan, then add the missing ACLs and remove the ones the file no longer grants
    (to its own principals only). Asks first unless --yes; off a terminal it needs --yes."""
    planned = _plan(file, timeout)
    _show(planned)
    if not planned.pending:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise AclsError("refusing to apply without --yes: stdin is not a terminal")
        if not typer.confirm("Apply these changes?"):
            typer.echo("apply cancelled: nothing changed", err=True)
            raise typer.Exit(1)
    settings = get_settings()
    with naming_brokers(settings):
        admin = make_admin(settings, logger=SILENT_LOG)
        apply(admin, planned, timeout)
        left = plan(admin, load_acls(file), timeout)
    typer.echo(f"applied: {len(planned.adds)} added, {len(planned.removes)} removed")
    if left.pending:  # changed by someone else meanwhile: say so rather than claim a match
        typer.echo("the cluster changed meanwhile; run `keel acls plan` again", err=True)
