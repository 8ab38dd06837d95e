"""`keel outbox ...`: the transactional outbox source (PostgreSQL rows -> Kafka events)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.logging import configure_logging
from keel.settings import get_settings

outbox_app = command_group(
    "outbox", "Transactional outbox source: events written in a PostgreSQL transaction, to Kafka."
)


@outbox_app.command("init")
def init() -> None:
    """Create the outbox table (KEEL_OUTBOX_TABLE), its indexes and NOTIFY trigger; idempotent."""
    from keel.connectors.outbox import OutboxTable, connect, create_outbox, outbox_dsn
    from keel.connectors.postgres import describe_dsn

    settings = get_settings()
    table = OutboxTable.of(settings.outbox_table)
    dsn = outbox_dsn(settings)
    with connect(dsn) as conn:
        create_outbox(conn, table)
    typer.echo(
        f"outbox table {table.qualified} ready on {describe_dsn(dsn)} "
        f"(inserts notify channel {table.channel})"
    )


@outbox_app.command("run")
def run(
    http_port: Annotated[
        int | None,
        typer.Option(help="Port of /healthz, /readyz, /metrics; 0: none (KEEL_OUTBOX_HTTP_PORT)."),
    ] = None,
    create: Annotated[
        bool, typer.Option("--init", help="Create the table first, as `keel outbox init` does.")
    ] = False,
) -> None:
    """Publish committed outbox rows to Kafka until SIGTERM/Ctrl-C (JSON log lines)."""
    from keel.connectors.outbox import OutboxError, OutboxRelay, health_server
    from keel.health import run_serving

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if create:
        init()
    port = settings.outbox_http_port if http_port is None else http_port
    run_serving(OutboxRelay(settings), health_server, port, "KEEL_OUTBOX_HTTP_PORT", OutboxError)


@outbox_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Rows waiting to be published, the oldest one's age, and rows rejected as invalid."""
    from keel.connectors.outbox import OutboxTable, connect, outbox_dsn, outbox_status

    settings = get_settings()
    with connect(outbox_dsn(settings)) as conn:
        figures = outbox_status(conn, OutboxTable.of(settings.outbox_table))
    if as_json:
        typer.echo(json.dumps(figures.as_dict()))
        return
    age = figures.oldest_pending_age_s
    typer.echo(f"table:    {figures.table}")
    typer.echo(f"pending:  {figures.pending}")
    typer.echo(f"oldest:   {'-' if age is None else f'{age:.1f}s ago'}")
    typer.echo(f"rejected: {figures.rejected}  (rows with an error; never retried)")


@outbox_app.command("purge")
def purge() -> None:
    """Delete published rows older than KEEL_OUTBOX_RETENTION_H now (the relay does it too)."""
    from keel.connectors.outbox import (
        OutboxTable,
        connect,
        ensure_exists,
        outbox_dsn,
        purge_published,
    )

    settings = get_settings()
    table = OutboxTable.of(settings.outbox_table)
    with connect(outbox_dsn(settings)) as conn:
        ensure_exists(conn, table)
        deleted = purge_published(conn, table, settings.outbox_retention_h * 3600)
    typer.echo(f"{deleted} published rows deleted from {table.qualified}")
