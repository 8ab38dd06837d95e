"""The PostgreSQL sink: Keel events from Kafka, one row per event_id in a table.

Responsible for:
- the table (`create_table`, idempotent): the envelope as columns (event_id the primary
  key), where the record was read (topic, partition, offset) and the whole event as jsonb,
  with indexes on type, user_id and occurred_at;
- the row of an event (`event_row`, pure): decoded values made JSON-friendly (decimals as
  strings, bytes as base64, timestamps as integer microseconds, as the webhook sink sends
  them) and checked, so a record PostgreSQL would refuse is dead-lettered, not retried;
- the sink (`PgSink`), a `keel.runtime.BatchingSink`: the runtime's loop reads the
  events topics as one consumer group (read_committed, manual commits), decodes through
  the registry and batches (N events or T ms); the sink filters by type and writes a batch
  with COPY into a temporary table and one `INSERT ... SELECT ... ON CONFLICT (event_id) DO
  NOTHING`; the transaction commits, THEN the runtime commits the offsets.

Each event_id lands exactly once: a sink that dies between the database commit and the
offset commit reads the batch again and the primary key drops the rows it re-writes; what
was committed to Kafka is in the table. A record that is not a Keel event goes to the
dead-letter topic (keel.deadletters' headers, so `keel dlq` reads and replays it), acked
before the offsets move past it; so does a row PostgreSQL refuses for its data (a
constraint added to the table: the batch is then written row by row). While PostgreSQL is
down the sink pauses its partitions, keeps its place in the group, and retries with
backoff: memory holds one batch at most.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import functools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
import psycopg
from confluent_kafka import Message
from prometheus_client import (
    CollectorRegistry,
    Histogram,
)
from psycopg import sql

from connectors.postgres import TableName as Table
from connectors.postgres import connect as connect_postgres
from connectors.postgres import describe_dsn, first_line
from keel.deadletters import Failure
from keel.errors import KeelError
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
from keel.settings import KeelSettings
from schemas.catalog import load_catalog
from schemas.errors import DecodeError, RegistryError
from schemas.registry.client import RegistryClient
from schemas.serde import AvroSerde

log = logging.getLogger(__name__)

REASON_REJECTED = "rejected"  # PostgreSQL refused the row (a constraint added to the table)
# timestamptz holds years 4713 BC..294276 AD; Python's datetime 1..9999, which is plenty.
_MIN_US = int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
_MIN_US *= 1_000_000
_MAX_US = int(
    (datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
)
_MAX_US *= 1_000_000


class PgSinkError(KeelError):
    """The sink's database cannot be reached or used, or a setting is wrong (one line)."""


class Unwritable(ValueError):
    """A decoded record that cannot be a row (no event_id, a timestamp out of range...)."""


# --- rows (pure) -----------------------------------------------------------------------


class Row(NamedTuple):
    """One event's row, in the column order of the load table (COPY writes it as is)."""

    event_id: str
    type: str
    user_id: str
    occurred_at_us: int
    received_at_us: int
    source: str
    topic: str
    partition: int
    offset: int
    event: str  # JSON text of the whole event


def _plain(value: Any) -> Any:
    """What orjson cannot write, or jsonb cannot hold, as JSON-friendly values."""
    if isinstance(value, Decimal):
        return str(value)  # exact: money must not become a float
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _scrub(value: Any) -> Any:
    """jsonb (and text) refuse U+0000, and JSON has no NaN or infinity: replace them, rarely
    needed, so only called when the fast path's output shows one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


@functools.lru_cache(maxsize=256)
def _may_hold_floats(event_type: object) -> bool:
    """Whether the catalog's schema of this type has a float or double anywhere (unknown
    types: assume so). Walking every event for NaN was a fifth of the sink's time."""
    if not isinstance(event_type, str) or event_type not in load_catalog():
        return True
    text = json.dumps(load_catalog().get(event_type).schema)
    return '"float"' in text or '"double"' in text


def event_json(event: Mapping[str, Any]) -> str:
    """The event as JSON text jsonb accepts."""
    text = orjson.dumps(event, default=_plain).decode()
    # orjson writes NaN/inf as null: keep what it was, as a string.
    if "\\u0000" in text or (
        "null" in text and _may_hold_floats(event.get("type")) and _has_nonfinite(event)
    ):
        text = orjson.dumps(_scrub(event), default=_plain).decode()
    return text


def _text(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str):
        raise Unwritable(f"field {name!r}: expected a string, got {type(value).__name__}")
    return value.replace("\x00", "\ufffd")


def _micros(event: Mapping[str, Any], name: str) -> int:
    value = event.get(name)
    if isinstance(value, datetime):  # a decoder that builds datetimes
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unwritable(f"field {name!r}: expected timestamp-micros, got {type(value).__name__}")
    if not _MIN_US <= value <= _MAX_US:
        raise Unwritable(f"field {name!r}: {value} microseconds is outside years 1..9999")
    return value


def event_row(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> Row:
    """The row of one decoded event; Unwritable names the field PostgreSQL would refuse."""
    raw_id = event.get("event_id")
    try:
        event_id = str(uuid.UUID(str(raw_id))) if raw_id is not None else None
    except ValueError:
        event_id = None
    if event_id is None:
        raise Unwritable(f"field 'event_id': {raw_id!r} is not a UUID")
    return Row(
        event_id=event_id,
        type=_text(event, "type"),
        user_id=_text(event, "user_id"),
        occurred_at_us=_micros(event, "occurred_at"),
        received_at_us=_micros(event, "received_at"),
        source=_text(event, "source"),
        topic=topic,
        partition=partition,
        offset=offset,
        event=event_json(event),
    )


def parse_types(value: str) -> list[str]:
    """KEEL_PGSINK_TYPES as patterns; each must match a type of the catalog."""
    patterns = [p.strip() for p in value.split(",") if p.strip()]
    known = load_catalog().types()
    for pattern in patterns:
        if not fnmatch.filter(known, pattern):
            raise PgSinkError(
                f"KEEL_PGSINK_TYPES: {pattern!r} matches no event type of the catalog "
                f"({', '.join(known)})"
            )
    return patterns


def wanted(patterns: list[str], event_type: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def parse_topics(value: str) -> list[str]:
    topics = [t.strip() for t in value.split(",") if t.strip()]
    if not topics:
        raise PgSinkError("KEEL_PGSINK_TOPICS names no topic")
    return topics


# --- the table -------------------------------------------------------------------------


def pgsink_dsn(settings: KeelSettings) -> str:
    return (settings.pgsink_dsn or settings.postgres_dsn).get_secret_value()


def connect(dsn: str) -> psycopg.Connection[Any]:
    return connect_postgres(
        dsn, application="keel-pgsink", setting="KEEL_PGSINK_DSN", error=PgSinkError
    )


def create_table(conn: psycopg.Connection[Any], table: Table) -> None:
    """The events table and its indexes; idempotent (IF NOT EXISTS throughout)."""
    t = table.ident()
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " event_id uuid PRIMARY KEY,"
            " type text NOT NULL,"
            " user_id text NOT NULL,"
            " occurred_at timestamptz NOT NULL,"
            " received_at timestamptz NOT NULL,"
            " source text NOT NULL,"
            " topic text NOT NULL,"
            " partition integer NOT NULL,"
            ' "offset" bigint NOT NULL,'
            " event jsonb NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now())"
        ).format(t),
        # "what did this user do", "how many X per day": the usual questions, by time.
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (type, occurred_at)").format(
            sql.Identifier(f"{table.name}_type_idx"), t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (user_id, occurred_at)").format(
            sql.Identifier(f"{table.name}_user_idx"), t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (occurred_at)").format(
            sql.Identifier(f"{table.name}_occurred_idx"), t
        ),
    ]
    if table.schema:
        statements.insert(
            0, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema))
        )
    try:
        with conn.transaction():
            # Two sinks starting at once must not race on CREATE: serialize on the name.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table.qualified,))
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error as exc:
        raise PgSinkError(f"cannot create {table.qualified}: {first_line(exc)}") from None


def ensure_exists(conn: psycopg.Connection[Any], table: Table) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (table.ident().as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise PgSinkError(f"table {table.qualified} does not exist: run `keel pgsink init` first")


# Measured (bench/pgsink.py, batches of 500): COPY into a temporary table then one
# INSERT ... SELECT wrote 3x the rows/s of one INSERT ... SELECT FROM unnest(arrays), whose
# array parameters psycopg builds slowly, and beat executemany's pipelined INSERTs by ~15%.
LOAD_TABLE = "pgsink_load"
_LOAD_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {LOAD_TABLE} (event_id uuid, type text, user_id text,"
    ' occ bigint, rec bigint, source text, topic text, partition int, "offset" bigint,'
    " event jsonb) ON COMMIT DELETE ROWS"
)
COPY_LOAD = f"COPY {LOAD_TABLE} FROM STDIN"


def insert_from_load(table: Table) -> sql.Composed:
    """Move the loaded batch into the table; duplicates dropped by the key. Timestamps
    travel as integer microseconds and are converted exactly in SQL."""
    return sql.SQL(
        "INSERT INTO {} (event_id, type, user_id, occurred_at, received_at, source, topic,"
        ' partition, "offset", event)'
        " SELECT event_id, type, user_id,"
        " timestamptz 'epoch' + occ * interval '1 microsecond',"
        " timestamptz 'epoch' + rec * interval '1 microsecond',"
        ' source, topic, partition, "offset", event FROM '
        + LOAD_TABLE
        + " ON CONFLICT (event_id) DO NOTHING"
    ).format(table.ident())


def prepare_load(conn: psycopg.Connection[Any]) -> None:
    """The per-connection temporary table batches are copied into."""
    conn.execute(_LOAD_DDL)


def write_rows(conn: psycopg.Connection[Any], insert: sql.Composed, rows: list[Row]) -> int:
    """COPY the rows in, insert them, commit: the number of rows new to the table."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(COPY_LOAD) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(insert)
        return max(cur.rowcount, 0)


@dataclass(frozen=True)
class SinkStatus:
    table: str
    rows: int
    newest_occurred_at: datetime | None
    group: str
    lag: int | None  # None: the group has committed nothing and has no members

    def as_dict(self) -> dict[str, Any]:
        newest = self.newest_occurred_at
        return {
            "table": self.table,
            "rows": self.rows,
            "newest_occurred_at": newest.isoformat() if newest else None,
            "group": self.group,
            "lag": self.lag,
        }


def table_figures(conn: psycopg.Connection[Any], table: Table) -> tuple[int, datetime | None]:
    ensure_exists(conn, table)
    row = conn.execute(
        sql.SQL("SELECT count(*), max(occurred_at) FROM {}").format(table.ident())
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


# --- the sink --------------------------------------------------------------------------


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


# --- health ----------------------------------------------------------------------------


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
