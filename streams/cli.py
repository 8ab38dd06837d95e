"""`keel streams`: run a stream worker, scaffold a processor, list processors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.errors import KeelError
from keel.kafka import (
    TopicSpec,
    ensure_topics,
    kafka_call,
    make_admin,
    naming_brokers,
    topic_replication,
    wait_for_topics,
)
from keel.logging import configure_logging
from keel.settings import KeelSettings, get_settings
from keel.streams.errors import StreamsError

streams_app = command_group(
    "streams", "Stream processors: materialized views, job triggers, cache fill (Faust)."
)

log = logging.getLogger(__name__)


def source_partitions(settings: KeelSettings) -> int:
    """The source topic's partition count, creating the topic when it does not exist."""
    admin = make_admin(settings)
    name = settings.streams_source_topic
    # The worker's first call to the brokers: a refusal (wrong password, untrusted CA,
    # missing ACL) ends it here in one line naming the cause.
    with naming_brokers(settings), kafka_call("reading the topics' metadata", 15):
        topics = admin.list_topics(timeout=15).topics
    if name not in topics:
        with naming_brokers(settings):
            ensure_topics(
                admin, [TopicSpec(name, settings.streams_source_partitions)], settings=settings
            )
            # The metadata that shows it: another broker asked now may not know it yet.
            topics = wait_for_topics(admin, [name])
    meta = topics[name]
    if meta.error is not None or not meta.partitions:
        raise StreamsError(f"source topic {name!r} is not usable: {meta.error}")
    return len(meta.partitions)


def build(settings: KeelSettings) -> object:
    """The worker's StreamsApp, with every topic it writes to created up front."""
    from keel.streams.app import StreamsApp
    from keel.streams.codec import AvroCodec
    from keel.streams.discovery import discover

    partitions = source_partitions(settings)
    # Faust's settings take a number, not the brokers' default: read it once.
    admin = make_admin(settings)
    settings = settings.model_copy(
        update={"replication_factor": topic_replication(admin, settings)}
    )
    codec = AvroCodec.from_settings(settings)
    processors = discover(only=[p.strip() for p in settings.streams_processors.split(",")])
    app = StreamsApp(settings, processors, codec, partitions=partitions)
    app.datadir.mkdir(parents=True, exist_ok=True)
    specs = app.internal_topics()
    job_types = [t for t in codec.catalog.types() if t.startswith("job.")]
    specs += [
        TopicSpec(codec.job_topic(t, settings.streams_jobs_topic_prefix), partitions)
        for t in job_types
    ]
    ensure_topics(admin, specs, settings=settings)
    wait_for_topics(admin, [s.name for s in specs])
    return app


@streams_app.command()
def worker(
    port: int | None = typer.Option(None, help="Query API port (default KEEL_STREAMS_WEB_PORT)."),
    processors: str | None = typer.Option(
        None, help="Comma-separated processors to run (default: all, or KEEL_STREAMS_PROCESSORS)."
    ),
) -> None:
    """Run one stream worker; start as many as there are partitions, in one consumer group."""
    settings = get_settings()
    update: dict[str, object] = {}
    if port is not None:
        update["streams_web_port"] = port
    if processors is not None:
        update["streams_processors"] = processors
    if update:
        settings = settings.model_copy(update=update)
    configure_logging(settings.log_level, settings.log_format)
    from keel.streams.app import StreamsApp, tune_gc

    app = build(settings)
    if not isinstance(app, StreamsApp):  # pragma: no cover - build's return type
        raise StreamsError("could not build the stream app")
    log.info(
        "stream worker %s on %s, %d partitions, processors %s",
        settings.streams_app_id,
        settings.streams_web_port,
        app.partitions,
        ",".join(p.name for p in app.processors),
    )
    tune_gc()
    from keel.streams.shutdown import BoundedWorker

    BoundedWorker(
        app.app,
        shutdown_timeout=settings.streams_shutdown_timeout_s,
        loglevel=settings.log_level.lower(),
        # Keel's logging (one JSON object a line) stays: Faust must not replace it.
        override_logging=False,
        quiet=True,
        redirect_stdouts=False,
    ).execute_from_commandline()


@streams_app.command()
def new(
    name: Annotated[str, typer.Argument(help="Processor name: lower-case letters, digits and _.")],
    kind: Annotated[str, typer.Option(help="view, keyed-view or trigger.")] = "view",
    root: Annotated[
        Path, typer.Option(help="Project root (where streams/ and tests/ are).")
    ] = Path("."),
) -> None:
    """Scaffold a processor module under streams/processors/ and its tests under tests/streams/."""
    from keel.streams.scaffold import scaffold

    for path in scaffold(name, kind, root):
        typer.echo(f"created {path}")


@streams_app.command("list")
def list_processors() -> None:
    """The processors a worker would run."""
    from keel.streams.discovery import discover
    from keel.streams.processor import KeyedView, Sink, Trigger, View

    for proc in discover():
        kind = (
            "keyed-view"
            if isinstance(proc, KeyedView)
            else "view"
            if isinstance(proc, View)
            else "trigger"
            if isinstance(proc, Trigger)
            else "sink"
            if isinstance(proc, Sink)
            else "processor"
        )
        types = ",".join(sorted(proc.types)) or "*"
        typer.echo(f"{proc.name}\t{kind}\t{types}")


def main() -> None:  # pragma: no cover - `python -m keel.streams`
    try:
        streams_app()
    except KeelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
