"""`keel topics plan|apply`: the topics file (`topics.toml`) against the cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka.admin import AdminClient

from keel.command_group import command_group
from keel.kafka import SILENT_LOG, make_admin, naming_brokers
from keel.settings import KeelSettings, get_settings
from keel.topics import DEFAULT_FILE, Plan, TopicsError, apply, load_topics, plan

# Not 2: typer exits 2 on a usage error, and a drift check must tell the two apart.
EXIT_PENDING = 3

topics_app = command_group(
    "topics",
    "Topics as code: compare topics.toml with the cluster (plan) and make it so (apply).",
)

File = Annotated[
    Path,
    typer.Option("--file", "-f", help="The topics file.", dir_okay=False),
]
Timeout = Annotated[
    float, typer.Option(help="Seconds to wait for the brokers at each step.", min=1)
]


def _admin(settings: KeelSettings) -> AdminClient:
    return make_admin(settings, logger=SILENT_LOG)


def _plan(file: Path, timeout: float) -> Plan:
    settings = get_settings()
    # A bad file fails before any connection; what it leaves open, Keel's settings fill in as
    # for every topic a component creates (KEEL_REPLICATION_FACTOR, KEEL_MIN_INSYNC_REPLICAS).
    declared = [spec.for_cluster(settings) for spec in load_topics(file).specs()]
    with naming_brokers(settings):
        return plan(_admin(settings), declared, timeout)


def _show(planned: Plan, unmanaged: bool = False) -> None:
    # A shared cluster has many topics no file names: counted in the summary, listed on demand.
    for name in planned.unmanaged if unmanaged else ():
        typer.echo(f"  {name}  unmanaged (not in the file; left alone)")
    for line in planned.lines():
        typer.echo(line)
    typer.echo(planned.summary())


@topics_app.command(
    "plan", short_help="What apply would change; exit 3 when changes are pending (CI drift check)."
)
def plan_command(
    file: File = DEFAULT_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as one JSON object.")] = False,
    unmanaged: Annotated[
        bool, typer.Option("--unmanaged", help="Also list the topics the file does not name.")
    ] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Show each managed topic's replication and min.insync.replicas beside the file's, marked
    ! when at risk (below the cluster's default.replication.factor, a single replica on a
    multi-broker cluster, min.insync.replicas not below the replication) with the fix; then
    what apply would change: topics to create (+), partitions to add and configs to set (~,
    only keys the file declares, old -> new), and what apply cannot do (!: fewer partitions, a
    value the brokers reject; another replication factor, said how). Topics the file does not
    name are counted as unmanaged (listed with --unmanaged) and never touched. Exit status 0
    when the cluster matches the file and no topic is at risk, 3 otherwise (so CI can check
    for drift), 1 for a bad file or an unreachable broker, 2 for a usage error."""
    planned = _plan(file, timeout)
    if as_json:
        typer.echo(json.dumps(planned.to_dict()))
    else:
        _show(planned, unmanaged)
    if planned.pending:
        raise typer.Exit(EXIT_PENDING)


@topics_app.command(
    "apply", short_help="Print the plan, then create topics, add partitions, set configs."
)
def apply_command(
    file: File = DEFAULT_FILE,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Apply without asking (needed off a terminal).")
    ] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Print the plan, then create topics, add partitions and set configs until the cluster
    matches the file. Nothing is changed while any item is refused, and nothing is ever
    deleted. Asks first unless --yes; off a terminal (CI) it needs --yes."""
    planned = _plan(file, timeout)
    _show(planned)
    if planned.refusals:
        raise TopicsError("refusing to apply: fix the refused items (!) first; nothing changed")
    if not planned.changes:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise TopicsError("refusing to apply without --yes: stdin is not a terminal")
        if not typer.confirm("Apply these changes?"):
            typer.echo("apply cancelled: nothing changed", err=True)
            raise typer.Exit(1)
    settings = get_settings()
    with naming_brokers(settings):
        left = apply(_admin(settings), planned, timeout)
    typer.echo(
        f"applied: {len(planned.creates)} created, {len(planned.partitions)} with more "
        f"partitions, {len(planned.configs)} config(s) set"
    )
    if (
        left.changes or left.refusals
    ):  # changed by someone else meanwhile: say so rather than claim a match
        typer.echo("the cluster changed meanwhile; run `keel topics plan` again", err=True)
