"""The PostgreSQL sink: Keel events from Kafka, one row per event_id in a table.

Responsible for:
- the table (`create_table`, idempotent): the envelope as columns (event_id the primary
  key), where the record was read (topic, partition, offset) and the whole event as jsonb,
  with indexes on type, user_id and occurred_at;
- the row of an event (`event_row`, pure): decoded values made JSON-friendly (decimals as
  strings, bytes as base64, timestamps as integer microseconds, as the webhook sink sends
  them) and checked, so a record PostgreSQL would refuse is dead-lettered, not retried;
- the sink (`PgSink`): one consumer group (read_committed, manual commits) on the events
  topics; records decoded through the registry, filtered by type, batched (N events or T
  ms) and written with one `INSERT ... SELECT FROM unnest(...) ON CONFLICT (event_id) DO
  NOTHING`; the transaction commits, THEN the offsets do.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from psycopg import sql

from connectors.health import HealthServer
from connectors.postgres import TableName as Table
from connectors.postgres import connect as connect_postgres
from connectors.postgres import describe_dsn, first_line
from keel.backoff import Backoff
from keel.deadletters import (
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TIMESTAMP,
    H_ORIG_TOPIC,
    H_REASON,
)
from keel.errors import KeelError
from keel.kafka import (
    SILENT_LOG,
    TopicSpec,
    ensure_topics,
    has_record,
    kafka_call,
    make_admin,
    make_consumer,
    make_producer,
    naming_brokers,
)
from keel.settings import KeelSettings
from schemas.catalog import load_catalog
from schemas.errors import DecodeError, RegistryError
from schemas.registry.client import RegistryClient
from schemas.serde import AvroSerde

log = logging.getLogger(__name__)

REASON_UNDECODABLE = "undecodable"  # not Keel's Avro, or not an event PostgreSQL can hold
REASON_REJECTED = "rejected"  # PostgreSQL refused the row (a constraint added to the table)
H_EVENT_ID = "keel.event_id"
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
        self.consumed = Counter("keel_pgsink_consumed", "Records read.", registry=r)
        self.written = Counter(
            "keel_pgsink_written", "Rows inserted (duplicates not counted).", registry=r
        )
        self.duplicates = Counter(
            "keel_pgsink_duplicates", "Events whose event_id was already a row.", registry=r
        )
        self.filtered = Counter(
            "keel_pgsink_filtered", "Events skipped by KEEL_PGSINK_TYPES.", registry=r
        )
        self.dead_lettered = Counter(
            "keel_pgsink_dead_lettered", "Records written to the dead-letter topic.", registry=r
        )
        self.failures = Counter(
            "keel_pgsink_failures", "Batch writes that failed and were retried.", registry=r
        )
        self.batch_seconds = Histogram(
            "keel_pgsink_batch_seconds",
            "INSERT to offsets committed, for one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.buffered = Gauge(
            "keel_pgsink_buffered", "Events read and not written yet.", registry=r
        )


@dataclass
class Batch:
    """What was read since the last commit: rows to write, dead letters to deliver, and the
    offset to commit per partition once both are done."""

    rows: list[Row] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the record of each row
    letters: list[tuple[Message, str, str]] = field(default_factory=list)  # reason, error
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.rows) + len(self.letters)


AfterWrite = Callable[[Batch], None]


class PgSink:
    """The sink (see the module docstring). `run(stop)` on one thread until `stop` is set;
    no I/O before. `after_write(batch)` runs between the database commit and the offset
    commit (tests stop a sink at exactly that point)."""

    def __init__(
        self,
        settings: KeelSettings,
        *,
        serde: AvroSerde | None = None,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.settings = settings
        self.table = Table.of(settings.pgsink_table)
        self.dsn = pgsink_dsn(settings)
        self.topics = parse_topics(settings.pgsink_topics)
        self.types = parse_types(settings.pgsink_types)
        self.serde = serde
        self.after_write = after_write
        self.metrics = SinkMetrics()
        self.counts = {"read": 0, "written": 0, "duplicates": 0, "filtered": 0, "dead_lettered": 0}
        self.heartbeat = time.monotonic()  # the loop is alive (/healthz)
        self.ready = False  # joined the group and the last write worked (/readyz)
        self._insert = insert_from_load(self.table)
        self._conn: psycopg.Connection[Any] | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._batch = Batch()
        self._assigned: set[tuple[str, int]] = set()
        self._next: dict[tuple[str, int], int] = {}  # next offset expected per partition
        self._paused = False
        self._backoff = Backoff(settings.pgsink_backoff_max_s)
        self._stop = threading.Event()
        self._delivery_errors: list[str] = []

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

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()  # leaves the group; commits nothing (manual commits)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        s = self.settings
        if self.serde is None:
            self.serde = AvroSerde(RegistryClient(s.schema_registry_url), load_catalog())
        self._producer = make_producer(s, **{"linger.ms": 0})
        self._consumer = make_consumer(
            s.pgsink_group,
            s,
            # Decoding waits out a registry outage on this thread: leave room before the
            # group decides this member is stuck.
            **{"max.poll.interval.ms": 600_000, "session.timeout.ms": s.pgsink_session_timeout_ms},
        )
        self._consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "pgsink reading %s as group %s into %s on %s",
            ",".join(self.topics),
            s.pgsink_group,
            self.table.qualified,
            describe_dsn(self.dsn),
            extra={"types": self.types or "*"},
        )
        batch_s = s.pgsink_batch_ms / 1000
        next_progress = time.monotonic() + s.pgsink_progress_interval_s
        retry_at = 0.0
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                room = s.pgsink_batch_size - len(self._batch)
                if self._paused:
                    # Keep the membership alive (rebalance callbacks, heartbeats) and read
                    # nothing until the batch is written.
                    self._consume(1, min(0.2, max(0.0, retry_at - time.monotonic())))
                else:
                    timeout = 0.2
                    if self._batch.offsets:
                        timeout = max(
                            0.0, min(timeout, self._batch.started + batch_s - time.monotonic())
                        )
                    self._consume(room, timeout)
                batch = self._batch
                due = batch.offsets and (
                    len(batch) >= s.pgsink_batch_size or time.monotonic() >= batch.started + batch_s
                )
                if due and time.monotonic() >= retry_at:
                    if self._flush():
                        retry_at = 0.0
                    else:
                        delay = self._backoff.next()
                        retry_at = time.monotonic() + delay
                        if not self._paused:
                            self._pause()
                now = time.monotonic()
                if now >= next_progress:
                    self._log_progress()
                    next_progress = now + s.pgsink_progress_interval_s
            # Stopping: one last try to write what was read (the next start re-reads it
            # otherwise, which the primary key makes harmless).
            if self._batch.offsets:
                self._flush()
        finally:
            self._log_progress()
            log.info("pgsink stopped")

    def _consume(self, count: int, timeout: float) -> None:
        assert self._consumer is not None
        if count <= 0:
            return
        messages = self._consumer.consume(count, timeout)
        for msg in messages:
            if not has_record(msg):
                continue
            if not self._take(msg):
                break  # stopping while the registry is down: the rest is read again later

    def _take(self, msg: Message) -> bool:
        key = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        if key not in self._assigned or offset < self._next.get(key, 0):
            return True  # revoked meanwhile, or re-delivered after a pause: already held
        event = self._decode(msg)
        if event is None:
            return False
        batch = self._batch
        if not batch.offsets:
            batch.started = time.monotonic()
        self.counts["read"] += 1
        self.metrics.consumed.inc()
        if isinstance(event, str):
            batch.letters.append((msg, REASON_UNDECODABLE, event))
        else:
            event_type = event.get("type")
            if isinstance(event_type, str) and not wanted(self.types, event_type):
                self.counts["filtered"] += 1
                self.metrics.filtered.inc()
            else:
                try:
                    batch.rows.append(event_row(event, key[0], key[1], offset))
                    batch.messages.append(msg)
                except Unwritable as exc:
                    batch.letters.append((msg, REASON_UNDECODABLE, str(exc)))
        batch.offsets[key] = offset + 1
        self._next[key] = offset + 1
        self.metrics.buffered.set(len(batch.rows))
        return True

    def _decode(self, msg: Message) -> dict[str, Any] | str | None:
        """The event, or why it cannot be decoded, or None when stopping during a registry
        outage."""
        assert self.serde is not None
        delay = 0.5
        while True:
            try:
                return self.serde.decode_plain(msg.value() or b"")
            except RegistryError as exc:
                if not exc.retriable:
                    return f"{type(exc).__name__}: {exc}"
                # The registry is down: nothing behind this record can be decoded either.
                log.warning("registry unavailable, retrying in %.1fs: %s", delay, exc)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 30.0)
            except (DecodeError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"

    # -- writing and committing ---------------------------------------------------------
    def _flush(self) -> bool:
        """Dead letters acked, rows committed in PostgreSQL, then offsets committed. False
        (nothing committed to Kafka) when PostgreSQL or the dead-letter topic failed."""
        batch = self._batch
        started = time.monotonic()
        try:
            self._deliver_letters(batch)
            inserted = self._write(batch)
            self._deliver_letters(batch)  # the rows PostgreSQL refused, if any
        except (psycopg.Error, PgSinkError, _LettersFailed) as exc:
            self.ready = False
            self.metrics.failures.inc()
            if isinstance(exc, psycopg.Error) and self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None
            log.warning(
                "batch of %d not written, retrying (offsets not committed): %s",
                len(batch.rows),
                first_line(exc),
            )
            return False
        if self.after_write is not None:
            self.after_write(batch)
        self._commit(batch)
        duplicates = len(batch.rows) - inserted
        self.counts["written"] += inserted
        self.counts["duplicates"] += duplicates
        self.metrics.written.inc(inserted)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self._batch = Batch()
        self.metrics.buffered.set(0)
        self._backoff.reset()
        self.ready = True
        if self._paused:
            self._resume()
        return True

    def _write(self, batch: Batch) -> int:
        """Write the batch; when PostgreSQL refuses it for its data (a CHECK, NOT NULL or
        unique index someone added), write row by row and turn the refused ones into dead
        letters, so one row never blocks its partition."""
        if not batch.rows:
            return 0
        conn = self.connection()
        try:
            return write_rows(conn, self._insert, batch.rows)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            log.warning(
                "PostgreSQL refused the batch (%s): writing its %d rows one by one",
                first_line(exc),
                len(batch.rows),
            )
        inserted = 0
        rows, messages = [], []
        for row, msg in zip(batch.rows, batch.messages, strict=True):
            try:
                inserted += write_rows(conn, self._insert, [row])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                error = f"PostgreSQL refused the row: {first_line(exc)}"
                batch.letters.append((msg, REASON_REJECTED, error))
                continue
            rows.append(row)
            messages.append(msg)
        batch.rows, batch.messages = rows, messages
        return inserted

    def _deliver_letters(self, batch: Batch) -> None:
        if not batch.letters:
            return
        assert self._producer is not None
        self._delivery_errors = []
        for msg, reason, error in batch.letters:
            _kind, timestamp_ms = msg.timestamp()
            headers: list[tuple[str, str | bytes | None]] = [
                (H_ERROR, error),
                (H_REASON, reason),
                (H_ORIG_TOPIC, msg.topic() or ""),
                (H_ORIG_PARTITION, str(msg.partition())),
                (H_ORIG_OFFSET, str(msg.offset())),
                (H_ORIG_TIMESTAMP, str(timestamp_ms)),
            ]
            self._producer.produce(
                self.settings.pgsink_dlq_topic,
                key=msg.key(),
                value=msg.value(),
                headers=headers,
                on_delivery=self._delivered,
            )
        left = self._producer.flush(30)
        if left or self._delivery_errors:
            raise _LettersFailed(
                f"dead-letter topic {self.settings.pgsink_dlq_topic}: "
                f"{self._delivery_errors[0] if self._delivery_errors else 'no ack in 30s'}"
            )
        for msg, reason, error in batch.letters:
            log.warning(
                "record %s[%d]@%d dead-lettered to %s (%s): %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                self.settings.pgsink_dlq_topic,
                reason,
                error,
                extra={"reason": reason},
            )
        self.counts["dead_lettered"] += len(batch.letters)
        self.metrics.dead_lettered.inc(len(batch.letters))
        batch.letters = []  # delivered: a retry of the rows does not send them twice

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _commit(self, batch: Batch) -> None:
        assert self._consumer is not None
        offsets = [
            TopicPartition(topic, partition, at)
            for (topic, partition), at in batch.offsets.items()
            if (topic, partition) in self._assigned
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a rebalance under way: the new owner re-writes, harmlessly
            log.warning("offset commit failed: %s", exc)

    def _pause(self) -> None:
        assert self._consumer is not None
        self._paused = True
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        if tps:
            self._consumer.pause(tps)
        log.warning("PostgreSQL write failed: partitions paused until the batch is written")

    def _resume(self) -> None:
        assert self._consumer is not None
        self._paused = False
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        if tps:
            self._consumer.resume(tps)
        log.info("batch written: partitions resumed")

    # -- rebalances (inside consume, on this thread) ------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            self._next.pop((tp.topic, tp.partition), None)
        if self._paused and partitions:
            consumer.pause(partitions)
        self.ready = True
        log.info(
            "assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "none"
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Write and commit what was read before another member takes over; if that fails,
        # it re-reads those records (and the primary key drops what this one wrote).
        if self._batch.offsets:
            self._flush()
        self._release(partitions)
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions)
        log.warning("lost %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _release(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        for key in gone:
            self._next.pop(key, None)
        batch = self._batch
        if gone & batch.offsets.keys():
            # Their records are the new owner's now: drop them from what this one holds.
            kept = [
                (r, m)
                for r, m in zip(batch.rows, batch.messages, strict=True)
                if (r.topic, r.partition) not in gone
            ]
            batch.rows = [r for r, _ in kept]
            batch.messages = [m for _, m in kept]
            batch.letters = [
                letter
                for letter in batch.letters
                if (letter[0].topic(), letter[0].partition()) not in gone
            ]
            for key in gone:
                batch.offsets.pop(key, None)

    def _log_progress(self) -> None:
        c = self.counts
        log.info(
            "pgsink progress: %d read, %d written, %d duplicates, %d filtered, %d dead-lettered",
            c["read"],
            c["written"],
            c["duplicates"],
            c["filtered"],
            c["dead_lettered"],
            extra={**c, "buffered": len(self._batch.rows), "paused": self._paused},
        )


class _LettersFailed(Exception):
    """The dead-letter topic did not ack: nothing may be committed past those records."""


# --- health ----------------------------------------------------------------------------


def health_server(sink: PgSink, port: int) -> HealthServer:
    """`/healthz` (the loop is alive), `/readyz` (in the group and writing) and `/metrics`."""
    return HealthServer(
        "pgsink",
        port,
        registry=sink.metrics.registry,
        heartbeat=lambda: sink.heartbeat,
        ready=lambda: sink.ready,
        stale_after=3 * max(sink.settings.pgsink_backoff_max_s, 1.0) + 60,
    )
