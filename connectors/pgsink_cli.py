"""`keel pgsink ...`: the PostgreSQL sink (Kafka events -> rows of a PostgreSQL table)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.logging import configure_logging
from keel.settings import get_settings

pgsink_app = command_group(
    "pgsink", "PostgreSQL sink: events from Kafka into a table, each event_id once."
)


@pgsink_app.command("init")
def init() -> None:
    """Create the events table (KEEL_PGSINK_TABLE) and its indexes; idempotent."""
    from keel.connectors.pgsink import Table, connect, create_table, pgsink_dsn
    from keel.connectors.postgres import describe_dsn

    settings = get_settings()
    table = Table.of(settings.pgsink_table)
    dsn = pgsink_dsn(settings)
    with connect(dsn) as conn:
        create_table(conn, table)
    typer.echo(f"events table {table.qualified} ready on {describe_dsn(dsn)}")


@pgsink_app.command("run")
def run(
    http_port: Annotated[
        int | None,
        typer.Option(help="Port of /healthz, /readyz, /metrics; 0: none (KEEL_PGSINK_HTTP_PORT)."),
    ] = None,
    create: Annotated[
        bool, typer.Option("--init", help="Create the table first, as `keel pgsink init` does.")
    ] = False,
) -> None:
    """Write events into the table until SIGTERM/Ctrl-C (JSON log lines, periodic progress)."""
    from keel.connectors.pgsink import PgSink, PgSinkError, health_server
    from keel.health import run_serving

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if create:
        init()
    port = settings.pgsink_http_port if http_port is None else http_port
    run_serving(PgSink(settings), health_server, port, "KEEL_PGSINK_HTTP_PORT", PgSinkError)


@pgsink_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Rows in the table, the newest occurred_at, and the sink group's consumer lag."""
    from keel.connectors.pgsink import SinkStatus, Table, connect, pgsink_dsn, table_figures
    from keel.kafka import SILENT_LOG, make_admin, naming_brokers
    from keel.lag import UnknownGroup, group_lag

    settings = get_settings()
    table = Table.of(settings.pgsink_table)
    with connect(pgsink_dsn(settings)) as conn:
        rows, newest = table_figures(conn, table)
    group = settings.pgsink_group
    with naming_brokers(settings):
        try:
            lag: int | None = group_lag(make_admin(settings, logger=SILENT_LOG), group).total
        except UnknownGroup:
            lag = None
    figures = SinkStatus(table.qualified, rows, newest, group, lag)
    if as_json:
        typer.echo(json.dumps(figures.as_dict()))
        return
    typer.echo(f"table:   {figures.table}")
    typer.echo(f"rows:    {rows}")
    typer.echo(f"newest:  {newest.isoformat() if newest else '-'}  (occurred_at)")
    typer.echo(f"lag:     {'-' if lag is None else lag}  (group {group})")
