"""`keel lag [GROUP ...]`: how far consumer groups are behind, per partition."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from keel.kafka import SILENT_LOG, make_admin, naming_brokers
from keel.lag import GroupLag, group_lag, list_groups
from keel.settings import get_settings


def lag(
    groups: Annotated[
        list[str] | None, typer.Argument(help="Consumer groups; every group when none.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per group.")] = False,
    partitions: Annotated[
        bool, typer.Option("--partitions", "-p", help="A line per partition, not per group.")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(help="Print again every WATCH seconds until Ctrl-C.", min=0.5),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the brokers' answers.", min=0.5)
    ] = 10.0,
) -> None:
    """Show each consumer group's lag (log end minus committed offset), read from the brokers.

    Exit status 1 when a named group does not exist or the brokers do not answer."""
    settings = get_settings()
    admin = make_admin(settings, logger=SILENT_LOG)
    while True:
        with naming_brokers(settings):
            names = groups or list_groups(admin, timeout)
            for report in (group_lag(admin, name, timeout) for name in names):
                typer.echo(json.dumps(report.to_dict()) if as_json else _text(report, partitions))
        if not names and not as_json:
            typer.echo("no consumer groups", err=True)
        if watch is None:
            return
        time.sleep(watch)  # a refresh period the user asked for, not a wait for an effect
        typer.echo("")


def _text(report: GroupLag, partitions: bool) -> str:
    head = f"{report.group}  {report.state.lower()}  members {report.members}  lag {report.total}"
    if not partitions:
        return head
    rows = [
        f"  {p.topic}[{p.partition}]  committed {'-' if p.committed is None else p.committed}"
        f"  end {p.end}  lag {p.lag}"
        for p in report.partitions
    ]
    return "\n".join([head, *rows])
