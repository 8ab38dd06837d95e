"""`keel archive ...`: the archive sink (Kafka events -> files, by hour and partition)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.logging import configure_logging
from keel.settings import get_settings

archive_app = command_group(
    "archive", "Archive sink: events from Kafka into files by hour and partition, and back."
)

RootOption = Annotated[
    Path | None, typer.Option("--root", help="Archive root (KEEL_ARCHIVE_ROOT).")
]


@archive_app.command("run")
def run(
    root: RootOption = None,
    http_port: Annotated[
        int | None,
        typer.Option(help="Port of /healthz, /readyz, /metrics; 0: none (KEEL_ARCHIVE_HTTP_PORT)."),
    ] = None,
) -> None:
    """Archive the topics (KEEL_ARCHIVE_TOPICS) until SIGTERM/Ctrl-C: the open files are
    finished and committed; JSON log lines, progress every KEEL_ARCHIVE_PROGRESS_INTERVAL_S."""
    from keel.connectors.archive import ArchiveError, ArchiveSink, health_server
    from keel.health import run_serving

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    port = settings.archive_http_port if http_port is None else http_port
    run_serving(
        ArchiveSink(settings, root=root),
        health_server,
        port,
        "KEEL_ARCHIVE_HTTP_PORT",
        ArchiveError,
    )


@archive_app.command("list")
def list_(
    topic: Annotated[str | None, typer.Argument(help="Only this topic's files.")] = None,
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Finished archive files: hour, partition, offsets, record count, size."""
    from keel.connectors.archive import archive_root, describe, list_files

    base = archive_root(get_settings(), root)
    rows = describe(list_files(base, topic), base) if base.is_dir() else []
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo(f"no archive files under {base}" + (f" for {topic}" if topic else ""))
        return
    typer.echo(f"{'hour':<14} {'partition':>9} {'offsets':>23} {'records':>8} {'bytes':>10}  path")
    for r in rows:
        offsets = f"{r['first_offset']}-{r['last_offset']}"
        typer.echo(
            f"{r['hour']:<14} {r['partition']:>9} {offsets:>23} {r['records']:>8} "
            f"{r['bytes']:>10}  {r['path']}"
        )
    typer.echo(f"{len(rows)} files, {sum(r['records'] for r in rows)} records")


@archive_app.command("restore")
def restore(
    topic: Annotated[str, typer.Argument(help="The archived topic.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Target topic to produce to (required).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="First hour, YYYY-MM-DDTHH (UTC), included.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Last hour, YYYY-MM-DDTHH (UTC), included.")
    ] = None,
    root: RootOption = None,
) -> None:
    """Produce archived records of TOPIC (an hour range) to --to, with their original keys,
    values and headers, and `keel.archive.file` naming the file; each file once."""
    from keel.connectors.archive import ArchiveError, ArchiveFile, archive_root, parse_hour
    from keel.connectors.archive import restore as restore_records

    if not to:
        raise ArchiveError("--to: the target topic is required (e.g. --to events.backfill)")
    first = parse_hour(since, "--from") if since is not None else None
    last = parse_hour(until, "--until") if until is not None else None
    settings = get_settings()
    base = archive_root(settings, root)

    def progress(index: int, total: int, archived: ArchiveFile, count: int) -> None:
        typer.echo(f"[{index}/{total}] {archived.path.relative_to(base)}: {count} records")

    result = restore_records(settings, base, topic, to, since=first, until=last, progress=progress)
    typer.echo(f"restored {result.records} records from {result.files} files to {to}")
