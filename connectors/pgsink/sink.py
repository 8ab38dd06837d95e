"""The sink (`PgSink`), a `keel.runtime.BatchingSink`: the runtime's loop reads the events
topics as one consumer group (read_committed, manual commits), decodes through the registry
and batches (N events or T ms); the sink filters by type and writes a batch (`table`); the
transaction commits, THEN the runtime commits the offsets."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Message
from prometheus_client import CollectorRegistry, Histogram

from keel.connectors.pgsink.rows import (
    PgSinkError,
    Row,
    Unwritable,
    event_row,
    parse_topics,
    parse_types,
    wanted,
)
from keel.connectors.pgsink.table import (
    Table,
    connect,
    ensure_exists,
    insert_from_load,
    pgsink_dsn,
    prepare_load,
    write_rows,
)
from keel.connectors.postgres import describe_dsn, first_line
from keel.deadletters import Failure
from keel.health import HealthServer, check, loop_server
from keel.kafka import (
    SILENT_LOG,
    TopicSpec,
    ensure_topics,
    kafka_call,
    make_admin,
    naming_brokers,
)
from keel.metrics import ConsumerMetrics
from keel.runtime import Batch, BatchingSink, BatchRunner, Letter, RunnerConfig, Skip, Written
from keel.schemas.catalog import load_catalog
from keel.schemas.errors import DecodeError, RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

REASON_REJECTED = "rejected"  # PostgreSQL refused the row (a constraint added to the table)


class SinkMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # keel_consumer_*{component="pgsink"}: processed counts rows inserted; skipped, by
        # reason, the events already a row (duplicate) or not wanted (filtered).
        self.consumer = ConsumerMetrics("pgsink", r)
        self.batch_seconds = Histogram(
            "keel_pgsink_batch_seconds",
            "COPY, INSERT and commit of one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )


class PgSink(BatchingSink[Row]):
    """The sink (see the module docstring) on keel.runtime's loop: this class is what is
    PostgreSQL's; `run(stop)` on one thread until `stop` is set, no I/O before.
    `after_write(batch)` runs between the database commit and the offset commit (tests stop
    a sink at exactly that point)."""

    component = "pgsink"
    transient = (psycopg.Error, PgSinkError)

    def __init__(
        self,
        settings: KeelSettings,
        *,
        serde: AvroSerde | None = None,
        after_write: Callable[[Batch[Row]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.table = Table.of(settings.pgsink_table)
        self.dsn = pgsink_dsn(settings)
        self.topics = parse_topics(settings.pgsink_topics)
        self.types = parse_types(settings.pgsink_types)
        self.serde = serde
        self.metrics = SinkMetrics()
        self.counts = self.metrics.consumer  # what the progress log and /metrics report
        self._insert = insert_from_load(self.table)
        self._conn: psycopg.Connection[Any] | None = None
        s = settings
        config = RunnerConfig(
            group=s.pgsink_group,
            topics=self.topics,
            dlq_topic=s.pgsink_dlq_topic,
            batch_size=s.pgsink_batch_size,
            batch_ms=s.pgsink_batch_ms,
            backoff_max_s=s.pgsink_backoff_max_s,
            session_timeout_ms=s.pgsink_session_timeout_ms,
            progress_interval_s=s.pgsink_progress_interval_s,
        )
        self.runner = BatchRunner(
            self,
            settings,
            config,
            decode=self._decode,
            undecodable=(RegistryError, DecodeError, ValueError),
            metrics=self.counts,
            after_write=after_write,
        )

    @property
    def ready(self) -> bool:
        return self.runner.ready

    @property
    def heartbeat(self) -> float:
        return self.runner.heartbeat

    # -- resources ------------------------------------------------------------------------
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            try:
                prepare_load(self._conn)
            except psycopg.Error as exc:
                raise PgSinkError(f"cannot prepare the load table: {first_line(exc)}") from None
        return self._conn

    def check(self) -> None:
        """One line (PgSinkError, KafkaEdgeError) unless PostgreSQL answers, the table
        exists and the brokers answer; then the dead-letter topic exists."""
        ensure_exists(self.connection(), self.table)
        admin = make_admin(self.settings, logger=SILENT_LOG)
        with naming_brokers(self.settings), kafka_call("reading the topics", 15):
            metadata = admin.list_topics(timeout=15)
        partitions = max(
            (len(metadata.topics[t].partitions) for t in self.topics if t in metadata.topics),
            default=1,
        )
        with naming_brokers(self.settings):
            dlq = TopicSpec(self.settings.pgsink_dlq_topic, partitions)
            ensure_topics(admin, [dlq], settings=self.settings)

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        if self.serde is None:
            self.serde = AvroSerde(RegistryClient(s.schema_registry_url), load_catalog())
        log.info(
            "pgsink reading %s as group %s into %s on %s",
            ",".join(self.topics),
            s.pgsink_group,
            self.table.qualified,
            describe_dsn(self.dsn),
            extra={"types": self.types or "*"},
        )
        self.runner.run(stop)

    def close(self) -> None:
        self.runner.close()

    # -- the Sink API ---------------------------------------------------------------------
    def _decode(self, value: bytes) -> dict[str, Any]:
        assert self.serde is not None
        return self.serde.decode_plain(value)

    def item(self, message: Message, value: Any) -> Row | Skip | Failure:
        event_type = value.get("type")
        if isinstance(event_type, str) and not wanted(self.types, event_type):
            return Skip("filtered")
        try:
            return event_row(
                value, message.topic() or "", message.partition() or 0, message.offset() or 0
            )
        except Unwritable as exc:
            return Failure.of(exc)

    def write(self, batch: Batch[Row]) -> Written:
        """COPY and INSERT the rows, commit; when PostgreSQL refuses the batch for its data
        (a CHECK, NOT NULL or unique index someone added), write row by row and turn the
        refused ones into dead letters, so one row never blocks its partition."""
        started = time.monotonic()
        conn = self.connection()
        try:
            inserted = write_rows(conn, self._insert, batch.items)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            log.warning(
                "PostgreSQL refused the batch (%s): writing its %d rows one by one",
                first_line(exc),
                len(batch.items),
            )
            inserted = self._write_one_by_one(conn, batch)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        return Written(inserted, {"duplicate": len(batch.items) - inserted})

    def _write_one_by_one(self, conn: psycopg.Connection[Any], batch: Batch[Row]) -> int:
        inserted = 0
        rows, messages = [], []
        for row, msg in zip(batch.items, batch.messages, strict=True):
            try:
                inserted += write_rows(conn, self._insert, [row])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                kind = Failure.of(exc).error_class
                failure = Failure(f"PostgreSQL refused the row: {first_line(exc)}", kind)
                batch.letters.append(Letter(msg, REASON_REJECTED, failure))
                continue
            rows.append(row)
            messages.append(msg)
        batch.items, batch.messages = rows, messages
        return inserted

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, psycopg.Error) and self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def health_server(sink: PgSink, port: int) -> HealthServer:
    """`/healthz` (the loop is alive), `/readyz` (in the group and writing) and `/metrics`."""
    return loop_server(
        "pgsink",
        port,
        registry=sink.metrics.registry,
        heartbeat=lambda: sink.heartbeat,
        stale_after=3 * max(sink.settings.pgsink_backoff_max_s, 1.0) + 60,
        ready=lambda: {"sink": check(sink.ready, table=sink.table.qualified)},
    )
