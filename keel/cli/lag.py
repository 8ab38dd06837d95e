"""`keel lag [GROUP ...]`: how far consumer groups are behind, per partition, in messages and
seconds; `keel lag --serve PORT` exports the same figures to Prometheus."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from keel.kafka import SILENT_LOG, make_admin, naming_brokers
from keel.lag import GroupLag, RecordTimes, group_lag, list_groups
from keel.settings import get_settings


def lag(
    groups: Annotated[
        list[str] | None, typer.Argument(help="Consumer groups; every group when none.")
    ] = None,
    *,
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
    serve: Annotated[
        int | None,
        typer.Option(
            help="Serve /metrics, /healthz, /readyz on this port (0: KEEL_LAG_EXPORTER_PORT) "
            "for Prometheus instead of printing.",
            min=0,
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            help="With --serve: seconds between reads (default KEEL_LAG_EXPORTER_INTERVAL_S).",
            min=0.5,
        ),
    ] = None,
) -> None:
    """Show each consumer group's lag: messages (log end minus committed offset) and seconds
    (how old the next unconsumed record is), read from the brokers.

    Exit status 1 when a named group does not exist or the brokers do not answer."""
    settings = get_settings()
    if serve is not None:
        from keel.lag_exporter import run_exporter

        run_exporter(
            settings,
            port=serve or settings.lag_exporter_port,
            interval=interval or settings.lag_exporter_interval_s,
            groups=groups or None,
            timeout=timeout,
        )
        return
    admin = make_admin(settings, logger=SILENT_LOG)
    times = RecordTimes(settings, timeout)
    try:
        while True:
            with naming_brokers(settings):
                names = groups or list_groups(admin, timeout)
                for report in (group_lag(admin, name, timeout, times) for name in names):
                    typer.echo(
                        json.dumps(report.to_dict()) if as_json else _text(report, partitions)
                    )
            times.sweep()
            if not names and not as_json:
                typer.echo("no consumer groups", err=True)
            if watch is None:
                return
            time.sleep(watch)  # a refresh period the user asked for, not a wait for an effect
            typer.echo("")
    finally:
        times.close()


def age(seconds: float | None) -> str:
    """4.2s, 4m03s, 2h05m: how ops say it; `?` when the record could not be read."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _text(report: GroupLag, partitions: bool) -> str:
    head = (
        f"{report.group}  {report.state.lower()}  members {report.members}  "
        f"lag {report.total}  behind {age(report.seconds)}"
    )
    if report.held:
        roles = sorted({h.role for h in report.held})
        counts = ", ".join(f"{sum(h.role == r for h in report.held)} {r}" for r in roles)
        head += f"  (internal partitions held, not lag: {counts})"
    if not partitions:
        return head
    rows = [
        f"  {p.topic}[{p.partition}]  committed {'-' if p.committed is None else p.committed}"
        f"  end {p.end}  lag {p.lag}  behind {age(p.seconds)}"
        for p in report.partitions
    ]
    rows += [
        f"  {h.topic}[{h.partition}]  {h.role}  end {h.end}  held by {h.member}"
        for h in report.held
    ]
    return "\n".join([head, *rows])
