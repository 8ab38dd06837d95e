"""The transactional outbox source: events committed in PostgreSQL, published to Kafka.

A product service INSERTs an event (the JSON the events API takes) into the outbox table in
the same transaction as its own writes, so the event exists exactly when that transaction
commits. This module owns:

- the table, its indexes and its wake-up trigger (`create_outbox`, idempotent);
- the relay (`OutboxRelay`): claim unpublished rows in id order with `FOR UPDATE SKIP
  LOCKED` (replicas share the queue without waiting on each other), publish them through the
  producer SDK (the HTTP API's validation, Avro encoding, keying and routing), wait for the
  broker's acks, then mark them published (or rejected, with the validation message) in the
  transaction that claimed them, and commit;
- `outbox_status` (what is waiting, for how long, what was rejected) and `purge_published`.

Delivery is at least once: a relay that dies between the acks and the commit leaves its rows
unpublished and they are sent again. Each row's event keeps one `event_id` (the relay writes
one into a row that has none, and commits that, before the row is produced), so stream
processors and job workers, which deduplicate by `event_id`, count it once.

Order: one relay publishes in id order. Several relays publish disjoint batches side by
side, so two events of one user written in separate transactions may reach Kafka in either
order when their rows land in different batches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from confluent_kafka import KafkaError
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads

from connectors.health import HealthServer
from keel.errors import KeelError
from keel.settings import KeelSettings, get_settings
from producers.sdk import KeelProducer
from schemas.errors import ValidationFailed

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
# Kafka errors no retry of the same bytes can fix: the row is rejected, not retried forever.
_PERMANENT_KAFKA_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)


class OutboxError(KeelError):
    """The outbox database cannot be reached or used (one line naming the cause)."""


class OutboxUnavailable(OutboxError):
    """Kafka, the registry or PostgreSQL cannot take the batch now; nothing was marked."""


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxTable:
    """Names derived from the table setting (`name` or `schema.name`)."""

    schema: str | None
    name: str

    @classmethod
    def of(cls, qualified: str) -> OutboxTable:
        schema, _, name = qualified.rpartition(".")
        return cls(schema or None, name)

    def ident(self, suffix: str = "") -> sql.Identifier:
        parts = (self.schema, self.name + suffix) if self.schema else (self.name + suffix,)
        return sql.Identifier(*parts)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def channel(self) -> str:
        """The NOTIFY channel the insert trigger signals and the relay listens on (at most
        63 bytes: pg_notify refuses a longer one, which would fail the service's insert)."""
        channel = self.qualified.replace(".", "__") + "_wakeup"
        if len(channel) > 63:
            digest = hashlib.sha1(self.qualified.encode()).hexdigest()[:8]
            channel = f"{channel[:54]}_{digest}"
        return channel


# Why this shape:
# - `id` orders the queue and is what a relay locks; an identity column never repeats.
# - `event jsonb`: the service writes the same JSON it would POST; the relay validates it
#   (a CHECK here would fail the service's own business transaction for a bad event).
# - `published_at` / `error` are the two end states; a row with neither is pending.
# - The partial index on pending ids is all the claim query reads: it stays as small as
#   the backlog however many published rows are kept, so claiming costs the same on a
#   table of a thousand rows or of a billion.
# - The partial index on `published_at` serves the purge (oldest first) without scanning
#   the table; marking a row published can never be a HOT update anyway (published_at is
#   in the pending index's predicate), so this index adds one entry, not a heap copy.
# - The rejected index keeps `status` cheap (rejections are rare; the index is tiny).
# - The trigger is per statement, and NOTIFY is delivered at commit only and folded within a
#   transaction: a service inserting 100 rows sends one wake-up, and a rolled-back
#   transaction none.
_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    " id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " event jsonb NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " published_at timestamptz,"
    " error text)",
    "CREATE INDEX IF NOT EXISTS {pending} ON {table} (id)"
    " WHERE published_at IS NULL AND error IS NULL",
    "CREATE INDEX IF NOT EXISTS {published} ON {table} (published_at)"
    " WHERE published_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS {rejected} ON {table} (id) WHERE error IS NOT NULL",
    "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN PERFORM pg_notify({channel}, ''); RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS {trigger} ON {table}",
    "CREATE TRIGGER {trigger} AFTER INSERT ON {table}"
    " FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
)


def create_outbox(conn: psycopg.Connection[Any], table: OutboxTable) -> None:
    """Create the table, its indexes and its trigger if missing (safe to run again, and from
    several processes at once: an advisory lock serialises them)."""
    names = {
        "table": table.ident(),
        "pending": sql.Identifier(table.name + "_pending"),
        "published": sql.Identifier(table.name + "_published_at"),
        "rejected": sql.Identifier(table.name + "_rejected"),
        "function": table.ident("_notify"),
        "trigger": sql.Identifier(table.name + "_notify"),
        "channel": sql.Literal(table.channel),
    }
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table.qualified,))
            if table.schema:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema))
                )
            for statement in _DDL:
                conn.execute(sql.SQL(statement).format(**names))
    except psycopg.Error as exc:
        raise OutboxError(f"creating outbox table {table.qualified}: {_first_line(exc)}") from exc


# --- connections -----------------------------------------------------------------------


def outbox_dsn(settings: KeelSettings) -> str:
    return (settings.outbox_dsn or settings.postgres_dsn).get_secret_value()


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable DSN"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit), or an OutboxError in one line."""
    try:
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="keel-outbox"
        )
    except psycopg.ProgrammingError as exc:  # a malformed DSN
        raise OutboxError(f"KEEL_OUTBOX_DSN: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise OutboxError(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_exists(conn: psycopg.Connection[Any], table: OutboxTable) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (table.ident().as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise OutboxError(
            f"outbox table {table.qualified} does not exist: run `keel outbox init` first"
        )


# --- status and purge ------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxStatus:
    table: str
    pending: int
    oldest_pending_age_s: float | None
    rejected: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "pending": self.pending,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "rejected": self.rejected,
        }


def outbox_status(conn: psycopg.Connection[Any], table: OutboxTable) -> OutboxStatus:
    ensure_exists(conn, table)
    t = table.ident()
    pending = conn.execute(
        sql.SQL(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM {}"
            " WHERE published_at IS NULL AND error IS NULL"
        ).format(t)
    ).fetchone()
    rejected = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE error IS NOT NULL").format(t)
    ).fetchone()
    assert pending is not None and rejected is not None  # aggregates always return a row
    age = None if pending[1] is None else max(0.0, float(pending[1]))
    return OutboxStatus(table.qualified, int(pending[0]), age, int(rejected[0]))


def purge_published(
    conn: psycopg.Connection[Any], table: OutboxTable, retention_s: float, batch: int = 5000
) -> int:
    """Delete rows published more than `retention_s` ago, `batch` rows per transaction (short
    locks, WAL in small pieces); return how many went. Pending and rejected rows stay."""
    statement = sql.SQL(
        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE published_at IS NOT NULL"
        " AND published_at < now() - make_interval(secs => %s)"
        " ORDER BY published_at LIMIT %s FOR UPDATE SKIP LOCKED)"
    ).format(t=table.ident())
    total = 0
    while True:
        count = conn.execute(statement, (retention_s, batch)).rowcount
        total += count
        if count < batch:
            return total


# --- the relay -------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What one claim did: rows published (row id -> event_id), rejected (row id -> why),
    left for a retry (not acknowledged), and the first transient error."""

    claimed: int = 0
    published: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: list[int] = field(default_factory=list)
    error: str | None = None


BeforeCommit = Callable[[BatchResult], None]


class _Backoff:
    def __init__(self, cap: float, first: float = 0.2) -> None:
        self.cap, self.first, self.delay = cap, first, 0.0

    def next(self) -> float:
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        return self.delay * random.uniform(0.8, 1.2)  # replicas do not retry in lockstep

    def reset(self) -> None:
        self.delay = 0.0


class RelayMetrics:
    """The relay's Prometheus metrics (a registry per relay: several in one process in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.published = Counter(
            "keel_outbox_published", "Rows acknowledged by Kafka and marked.", registry=r
        )
        self.rejected = Counter(
            "keel_outbox_rejected", "Rows rejected as invalid (error set).", registry=r
        )
        self.failures = Counter(
            "keel_outbox_failures",
            "Batches not published (Kafka, registry or PostgreSQL unavailable).",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "keel_outbox_batch_seconds",
            "Claim to commit of one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.pending = Gauge(
            "keel_outbox_pending", "Rows waiting, at the last progress check.", registry=r
        )
        self.oldest_age = Gauge(
            "keel_outbox_oldest_pending_age_seconds",
            "Age of the oldest waiting row, at the last progress check (0: none).",
            registry=r,
        )


class OutboxRelay:
    """Publishes committed outbox rows to Kafka. No I/O until used; `close()` when done.

    `before_commit(result)` runs after the acks, inside the claiming transaction (tests use it
    to stop a relay at exactly that point)."""

    def __init__(
        self,
        settings: KeelSettings | None = None,
        *,
        producer: KeelProducer | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.table = OutboxTable.of(self.settings.outbox_table)
        self.dsn = outbox_dsn(self.settings)
        self.before_commit = before_commit
        self._own_producer = producer is None
        self._producer = producer
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self.published_total = 0
        self.rejected_total = 0
        self._window = [0, 0]  # published, rejected since the last progress line
        self.metrics = RelayMetrics()
        self.heartbeat = time.monotonic()  # the loop is alive (/healthz)
        self.ready = False  # the last attempt published or found nothing to do (/readyz)
        t = self.table.ident()
        self._claim = sql.SQL(
            "SELECT id, event FROM {} WHERE published_at IS NULL AND error IS NULL"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        ).format(t)
        self._set_ids = sql.SQL(
            "UPDATE {t} SET event = jsonb_set(event, '{{event_id}}', to_jsonb(v.event_id))"
            " FROM unnest(%s::bigint[], %s::text[]) AS v(id, event_id) WHERE {t}.id = v.id"
        ).format(t=t)
        self._mark_published = sql.SQL(
            "UPDATE {} SET published_at = now() WHERE id = ANY(%s)"
        ).format(t)
        self._mark_rejected = sql.SQL(
            "UPDATE {t} SET error = v.error FROM unnest(%s::bigint[], %s::text[])"
            " AS v(id, error) WHERE {t}.id = v.id"
        ).format(t=t)

    # -- resources ------------------------------------------------------------------------
    @property
    def producer(self) -> KeelProducer:
        if self._producer is None:
            s = self.settings
            self._producer = KeelProducer(
                source=s.outbox_source,
                settings=s,
                # A batch waits for its acks at most this long, then is retried.
                config={"message.timeout.ms": int(s.outbox_delivery_timeout_s * 1000)},
            )
        return self._producer

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            # Decoding the claimed events was a tenth of the relay's time with `json`.
            set_json_loads(_loads, self._conn)
        return self._conn

    def check(self) -> None:
        """Raise OutboxError (one line) unless the database answers and the table exists."""
        ensure_exists(self.connection(), self.table)

    def _drop_connections(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        self._conn = self._listener = None

    def close(self) -> None:
        self._drop_connections()
        if self._own_producer and self._producer is not None:
            self._producer.close()
            self._producer = None

    # -- one batch ------------------------------------------------------------------------
    def publish_batch(self) -> BatchResult:
        """Claim up to `outbox_batch_size` pending rows, publish, mark, commit.

        Raises OutboxUnavailable (nothing marked, the rows stay pending) when Kafka, the
        registry or PostgreSQL cannot take the batch; a result with `retry` rows means the
        rest was committed and those few were not acknowledged."""
        while True:
            try:
                result = self._attempt()
            except psycopg.Error as exc:
                self._drop_connections()
                raise OutboxUnavailable(f"postgres: {_first_line(exc)}") from exc
            if result is not None:
                return result

    def _attempt(self) -> BatchResult | None:
        conn = self.connection()
        started = time.perf_counter()
        with conn.transaction():
            rows: list[tuple[int, Any]] = conn.execute(
                self._claim, (self.settings.outbox_batch_size,)
            ).fetchall()
            if not rows:
                return BatchResult()
            missing = [
                row_id
                for row_id, event in rows
                if isinstance(event, dict) and event.get("event_id") is None
            ]
            event_ids = {
                row_id: event.get("event_id") for row_id, event in rows if isinstance(event, dict)
            }
            if missing:
                # The id must be committed before the event is produced, or a re-send after
                # a crash would carry a new one. Commit it, then claim again.
                conn.execute(self._set_ids, (missing, [str(uuid.uuid4()) for _ in missing]))
                return None
            result = self._produce(rows)
            if result.retry and not result.published:
                # Kafka took none of it: an outage. Roll back, mark nothing, retry later.
                raise OutboxUnavailable(f"no acks from Kafka: {result.error}")
            if result.published:
                conn.execute(self._mark_published, (list(result.published),))
            if result.rejected:
                conn.execute(
                    self._mark_rejected, (list(result.rejected), list(result.rejected.values()))
                )
            if self.before_commit is not None:
                self.before_commit(result)
        self._count(result)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        for row_id, why in result.rejected.items():  # once committed: rejections are final
            log.warning(
                "outbox row %s rejected: %s",
                row_id,
                why,
                extra={"row_id": row_id, "event_id": event_ids.get(row_id)},
            )
        return result

    def _produce(self, rows: list[tuple[int, Any]]) -> BatchResult:
        result = BatchResult(claimed=len(rows))
        producer = self.producer
        futures: dict[int, concurrent.futures.Future[Any]] = {}
        try:
            try:  # the whole batch in one call when every event is valid (the usual case)
                sent = producer.send_many([event for _, event in rows])
                futures = {row_id: f for (row_id, _), f in zip(rows, sent, strict=True)}
            except ValidationFailed:  # none was queued: one at a time, to find the bad ones
                for row_id, event in rows:
                    try:
                        futures[row_id] = producer.send(event)
                    except ValidationFailed as exc:
                        result.rejected[row_id] = _describe(exc)
            producer.flush(self.settings.outbox_delivery_timeout_s)
        except (KeelError, OSError, TimeoutError, concurrent.futures.TimeoutError) as exc:
            # Broker down, queue full, registry unreachable, acks late: the transaction
            # rolls back, nothing is marked; what was queued may still land (at least once).
            raise OutboxUnavailable(f"publishing: {exc}") from exc
        for row_id, future in futures.items():
            delivery = future.result(timeout=0)
            if delivery.ok:
                result.published[row_id] = delivery.event_id
            elif _permanent(delivery.error):
                result.rejected[row_id] = f"not accepted by Kafka: {delivery.error}"
            else:
                result.retry.append(row_id)
                result.error = result.error or str(delivery.error)
        return result

    def _count(self, result: BatchResult) -> None:
        self.published_total += len(result.published)
        self.rejected_total += len(result.rejected)
        self._window[0] += len(result.published)
        self._window[1] += len(result.rejected)
        self.metrics.published.inc(len(result.published))
        self.metrics.rejected.inc(len(result.rejected))

    # -- the loop -------------------------------------------------------------------------
    def drain(self, stop: threading.Event | None = None) -> int:
        """Publish batches until the queue is empty (or a batch was short); return rows
        published. Raises OutboxUnavailable as soon as a batch could not be published."""
        done = 0
        while stop is None or not stop.is_set():
            result = self.publish_batch()
            done += len(result.published)
            if result.retry:
                raise OutboxUnavailable(
                    f"{len(result.retry)} of {result.claimed} rows not acknowledged: {result.error}"
                )
            if result.claimed < self.settings.outbox_batch_size:
                break
        return done

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            listener = connect(self.dsn)
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.table.channel)))
            self._listener = listener
        return self._listener

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        """Until a NOTIFY, `seconds` (the fallback poll) or stop, whichever comes first."""
        listener = self._listen()
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short slices: a SIGTERM is noticed within a quarter second.
            if any(True for _ in listener.notifies(timeout=min(left, 0.25), stop_after=1)):
                for _ in listener.notifies(timeout=0):  # fold a burst into one wake-up
                    pass
                return

    def run(self, stop: threading.Event) -> None:
        """The relay until `stop` is set: drain, then wait for a NOTIFY or the poll interval;
        back off (capped, jittered) while Kafka or PostgreSQL is down; purge old rows."""
        s = self.settings
        backoff = _Backoff(s.outbox_backoff_max_s)
        next_purge = time.monotonic()
        next_progress = time.monotonic() + s.outbox_progress_interval_s
        log.info(
            "outbox relay started on %s (%s), listening on %s",
            self.table.qualified,
            describe_dsn(self.dsn),
            self.table.channel,
            extra={"table": self.table.qualified, "batch_size": s.outbox_batch_size},
        )
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                self._listen()  # before draining: a row committed meanwhile still wakes us
                self.drain(stop)
                backoff.reset()
                self.ready = True
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + s.outbox_purge_interval_s
                    purged = purge_published(
                        self.connection(), self.table, s.outbox_retention_h * 3600
                    )
                    if purged:
                        log.info("outbox purge: %s published rows deleted", purged)
                wait = s.outbox_poll_interval_s
            except (OutboxError, psycopg.Error) as exc:
                if isinstance(exc, psycopg.Error):
                    self._drop_connections()
                self.ready = False
                self.metrics.failures.inc()
                wait = backoff.next()
                log.warning("outbox relay: %s; retrying in %.1fs", _first_line(exc), wait)
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + s.outbox_progress_interval_s
                self._progress()
            if stop.is_set():
                break
            try:
                if backoff.delay:
                    stop.wait(wait)
                else:
                    self._wait(stop, min(wait, max(0.0, next_progress - time.monotonic())))
            except (OutboxError, psycopg.Error) as exc:
                self._drop_connections()
                log.warning("outbox relay: listening: %s", _first_line(exc))
                stop.wait(backoff.next())
        self._progress()
        log.info("outbox relay stopped", extra={"published": self.published_total})

    def _progress(self) -> None:
        published, rejected = self._window
        self._window = [0, 0]
        pending: int | None = None
        try:  # what is waiting, for the log line and the gauges; the database may be down
            status = outbox_status(self.connection(), self.table)
            pending = status.pending
            self.metrics.pending.set(pending)
            self.metrics.oldest_age.set(status.oldest_pending_age_s or 0.0)
        except (OutboxError, psycopg.Error):
            self._drop_connections()
        log.info(
            "outbox progress: %s published, %s rejected (%s and %s since start), %s pending",
            published,
            rejected,
            self.published_total,
            self.rejected_total,
            "?" if pending is None else pending,
            extra={
                "published": published,
                "rejected": rejected,
                "published_total": self.published_total,
                "rejected_total": self.rejected_total,
                "pending": pending,
            },
        )


def health_server(relay: OutboxRelay, port: int) -> HealthServer:
    """`/healthz` (the relay loop is alive), `/readyz` (its last attempt worked: Kafka,
    registry and PostgreSQL answer) and `/metrics`."""
    settings = relay.settings
    # The loop beats at least every poll slice, or once per backoff pause.
    stale_after = 3 * max(settings.outbox_backoff_max_s, 1.0) + settings.outbox_delivery_timeout_s
    return HealthServer(
        "outbox",
        port,
        registry=relay.metrics.registry,
        heartbeat=lambda: relay.heartbeat,
        ready=lambda: relay.ready,
        stale_after=stale_after,
    )


def _loads(data: bytes | str) -> Any:
    """orjson, and `json` for what it refuses (integers past 64 bits), as the events API."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _describe(exc: ValidationFailed) -> str:
    """Every bad field and the rule it broke, as the HTTP API reports them."""
    problems = "; ".join(
        f"{e['field']}: {e['error']}" if e.get("field") else str(e["error"]) for e in exc.errors
    )
    return f"invalid event: {problems}"


def _permanent(error: Exception | None) -> bool:
    code = getattr(error, "code", None)
    retriable = getattr(error, "retriable", True)
    return not retriable and code in _PERMANENT_KAFKA_CODES
