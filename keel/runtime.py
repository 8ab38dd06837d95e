"""The consumer runtime: one confluent-kafka loop (`ConsumerLoop`) under Keel's sinks, and
the Sink API they implement.

Two kinds of sink, each one class. A `CommittingSink` (the archive) takes every record and
decides its own commit points (`CommitRunner`: after a file's rename). A `BatchingSink`
(the PostgreSQL sink) turns a decoded record into an item (or says to skip it, or why it
cannot be one) and writes a batch of items; `BatchRunner` does the rest, once for every
such sink:
- subscribe (one group, manual commits, read_committed), follow rebalances: on a
  revocation the batch is written and committed first; records of partitions gone are
  dropped from what is held;
- decode through the registry, waiting out a registry outage with `keel.backoff` (a record
  behind it could not be decoded either) and dead-lettering what is not Keel's Avro;
- batch by size or age; write; deliver the dead letters (`keel.deadletters` headers) and
  wait for their acks; THEN commit the offsets: nothing is committed past a record whose
  effect is not done (at least once; sinks make the effect idempotent);
- backpressure: a write that fails (or raises `SinkBackpressure`) pauses every assigned
  partition, keeps the membership alive and retries with backoff; memory holds one batch;
- liveness (`heartbeat`) and readiness (`ready`: in the group and the last write worked)
  for `keel.health`, and the figures (`keel.metrics.ConsumerMetrics`) that both /metrics
  and the progress log read.

Why not Sentry's arroyo underneath: measured in bench/consumer_loop.py and told in the
README (One consumer runtime).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from keel.backoff import Backoff
from keel.deadletters import Failure, Origin, letter_headers
from keel.errors import KeelError
from keel.kafka import has_record, make_consumer, make_producer
from keel.metrics import ConsumerMetrics
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
REASON_UNDECODABLE = "undecodable"
Key = tuple[str, int]


class SinkBackpressure(KeelError):
    """The one backpressure signal: the sink cannot take the batch now. The runner pauses
    fetching and retries after `retry_after` seconds (its own backoff when None)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Skip:
    """A record the sink deliberately does not apply (counted by `reason`, committed)."""

    reason: str


@dataclass(frozen=True)
class Letter:
    """A record going to the dead-letter topic, and why."""

    message: Message
    reason: str
    failure: Failure


@dataclass
class Batch(Generic[T]):
    """What was read since the last commit: the items to write (with the record of each),
    the dead letters to deliver, and the offset to commit per partition once both are done."""

    items: list[T] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    offsets: dict[Key, int] = field(default_factory=dict)
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.items) + len(self.letters)

    def forget(self, gone: set[Key]) -> None:
        """Drop what the partitions `gone` held: their records are another member's now."""
        if not gone & self.offsets.keys():
            return
        kept = [
            (i, m) for i, m in zip(self.items, self.messages, strict=True) if _key(m) not in gone
        ]
        self.items = [i for i, _ in kept]
        self.messages = [m for _, m in kept]
        self.letters = [x for x in self.letters if _key(x.message) not in gone]
        for key in gone:
            self.offsets.pop(key, None)


@dataclass(frozen=True)
class Written:
    """What a write did: effects done, and records found already done (by reason)."""

    processed: int
    skipped: Mapping[str, int] = field(default_factory=dict)


class BatchingSink(ABC, Generic[T]):
    """A sink on the runtime: `item` per decoded record, `write` per batch. `write` may move
    items it cannot write to `batch.letters` (and out of `batch.items`); raising retries
    the whole batch later (nothing committed meanwhile)."""

    component: str  # names its metrics and logs
    # What a failed write may raise and still be retried (an outage); anything else is a
    # bug and stops the runner.
    transient: tuple[type[Exception], ...] = (Exception,)

    @abstractmethod
    def item(self, message: Message, value: Any) -> T | Skip | Failure: ...

    @abstractmethod
    def write(self, batch: Batch[T]) -> Written: ...

    def failed(self, exc: Exception) -> None:
        """A write raised: drop what the failure spoiled (a broken connection)."""

    def release(self) -> None:
        """Release what `write` opened (the runner is closing)."""


@dataclass(frozen=True)
class RunnerConfig:
    group: str
    topics: list[str]
    dlq_topic: str = ""  # where a batching sink's dead letters go
    batch_size: int = 500
    batch_ms: int = 1000
    backoff_max_s: float = 30.0
    session_timeout_ms: int = 45_000
    progress_interval_s: float = 30.0


def decode_with_retry(
    decode: Callable[[bytes], Any],
    value: bytes,
    stop: threading.Event,
    undecodable: tuple[type[Exception], ...],
    backoff: Backoff,
) -> Any:
    """The decoded value, or the Failure of a record that cannot be decoded, or None when
    stopping during an outage. An error whose `retriable` is true (the registry is down)
    is waited out with `backoff`: nothing behind this record could be decoded either."""
    while True:
        try:
            value = decode(value)
            backoff.reset()
            return value
        except undecodable as exc:
            if not getattr(exc, "retriable", False):
                return Failure.of(exc)
            delay = backoff.next()
            log.warning("registry unavailable, retrying in %.1fs: %s", delay, exc)
            if stop.wait(delay):
                return None


class ConsumerLoop:
    """What every runner shares: the consumer and its subscription, the assignment, the
    loop with its liveness beat and progress log, offset commits and readiness. A runner
    says what one turn of the loop does (`_turn`) and what a rebalance means for its sink."""

    def __init__(
        self,
        component: str,
        settings: KeelSettings,
        config: RunnerConfig,
        metrics: ConsumerMetrics,
        **consumer_overrides: Any,
    ) -> None:
        self.component = component
        self.settings = settings
        self.config = config
        self.counts = metrics
        self.heartbeat = time.monotonic()  # the loop is alive (/healthz)
        self.ready = False  # in the group (and, for a batching sink, the last write worked)
        self._overrides = {"session.timeout.ms": config.session_timeout_ms, **consumer_overrides}
        self._consumer: Consumer | None = None
        self._assigned: set[Key] = set()
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set, on this thread (the rebalance callbacks run inside `consume`,
        on it too); no I/O before."""
        self._stop = stop
        c = self.config
        self._start()
        self._consumer = make_consumer(c.group, self.settings, **self._overrides)
        self._consumer.subscribe(
            c.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        next_progress = time.monotonic() + c.progress_interval_s
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                self._turn()
                if time.monotonic() >= next_progress:
                    self.log_progress()
                    next_progress = time.monotonic() + c.progress_interval_s
            self._stopping()
        finally:
            self._finish()
            self.log_progress()
            log.info("%s stopped", self.component)

    def commit(self, offsets: list[TopicPartition]) -> bool:
        """Commit `offsets` of partitions still assigned, synchronously; False when the
        broker refused (a rebalance under way: the new owner reads those records again)."""
        assert self._consumer is not None
        offsets = [tp for tp in offsets if (tp.topic, tp.partition) in self._assigned]
        if not offsets:
            return True
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:
            log.warning("offset commit failed: %s", exc)
            return False
        self.counts.commits += 1
        return True

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()  # leaves the group; commits nothing (manual commits)
            self._consumer = None

    def log_progress(self) -> None:
        c = self.counts
        log.info(
            "%s progress: %d read, %d written, %s skipped, %d dead-lettered",
            self.component,
            c.consumed,
            c.processed,
            dict(c.skipped) or 0,
            sum(c.dead_lettered.values()),
            extra={**c.counts(), **self._progress_extra()},
        )

    # -- what a runner decides ----------------------------------------------------------
    def _start(self) -> None:
        """Before the consumer is made (open a producer...)."""

    def _turn(self) -> None:
        raise NotImplementedError

    def _stopping(self) -> None:
        """`stop` was set: the last work before the consumer leaves."""

    def _finish(self) -> None:
        """Always, last: release what the runner holds, close the consumer."""
        self.close()

    def _progress_extra(self) -> dict[str, Any]:
        return {}

    def _assigned_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """After new partitions joined the assignment."""

    def _revoking(self, partitions: list[TopicPartition]) -> None:
        """Before partitions leave in good order: finish and commit their work."""

    def _released(self, partitions: list[TopicPartition], lost: bool) -> None:
        """After partitions left (lost: another member may own them already)."""

    # -- rebalances (inside consume, on the loop's thread) -----------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
        self._assigned_now(consumer, partitions)
        self.counts.assigned = len(self._assigned)
        self.counts.rebalances += 1
        self.ready = True
        log.info("assigned %s", _names(partitions) or "none")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoking(partitions)
        self._release(partitions, lost=False)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions, lost=True)
        log.warning("lost %s", _names(partitions))

    def _release(self, partitions: list[TopicPartition], lost: bool) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}
        self._released(partitions, lost)
        self.counts.assigned = len(self._assigned)
        self.counts.rebalances += 1


class CommittingSink(ABC):
    """A sink that decides its own commit points (the archive commits after its rename):
    it takes every record and calls `runner.commit(...)` when its effect is durable."""

    component: str

    @abstractmethod
    def take(self, message: Message) -> None: ...

    def tick(self) -> None:  # noqa: B027  (optional hook)
        """Once per turn of the loop (roll what aged)."""

    def on_assign(self, partitions: list[TopicPartition]) -> None:  # noqa: B027
        """New partitions are this sink's."""

    def on_revoke(self, partitions: list[TopicPartition]) -> None:  # noqa: B027
        """Partitions leave in good order: finish and commit their work now."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:  # noqa: B027
        """Partitions are gone (another member may write them already): discard."""

    def stop(self) -> None:  # noqa: B027
        """The runner stops: finish and commit what can be."""

    def progress(self) -> dict[str, Any]:
        return {}


class CommitRunner(ConsumerLoop):
    """Runs a `CommittingSink`: each record to `take`, `tick` once a turn, the rebalances
    to its hooks; its commits go through `commit`."""

    def __init__(
        self,
        sink: CommittingSink,
        settings: KeelSettings,
        config: RunnerConfig,
        metrics: ConsumerMetrics,
    ) -> None:
        super().__init__(sink.component, settings, config, metrics)
        self.sink = sink

    def _turn(self) -> None:
        assert self._consumer is not None
        for msg in self._consumer.consume(self.config.batch_size, 0.2):
            if has_record(msg):
                self.counts.consumed += 1
                self.sink.take(msg)
        self.sink.tick()

    def _finish(self) -> None:
        try:
            self.sink.stop()
        finally:
            self.close()

    def _progress_extra(self) -> dict[str, Any]:
        return self.sink.progress()

    def _assigned_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.sink.on_assign(partitions)

    def _revoking(self, partitions: list[TopicPartition]) -> None:
        self.sink.on_revoke(partitions)

    def _released(self, partitions: list[TopicPartition], lost: bool) -> None:
        if lost:
            self.sink.on_lost(partitions)


class BatchRunner(ConsumerLoop, Generic[T]):
    """Runs a `BatchingSink` (see the module docstring). `after_write(batch)` runs between
    the sink's write and the offset commit (tests stop a sink at exactly that point)."""

    def __init__(
        self,
        sink: BatchingSink[T],
        settings: KeelSettings,
        config: RunnerConfig,
        *,
        decode: Callable[[bytes], Any],
        undecodable: tuple[type[Exception], ...],
        metrics: ConsumerMetrics,
        after_write: Callable[[Batch[T]], None] | None = None,
    ) -> None:
        # Decoding waits out a registry outage on the loop's thread: leave room before the
        # group decides this member is stuck.
        super().__init__(
            sink.component, settings, config, metrics, **{"max.poll.interval.ms": 600_000}
        )
        self.sink = sink
        self.decode = decode
        self.undecodable = undecodable
        self.after_write = after_write
        self._producer: Producer | None = None
        self._batch: Batch[T] = Batch()
        self._next: dict[Key, int] = {}  # next offset expected per partition
        self._paused = False
        self._retry_at = 0.0
        self._backoff = Backoff(config.backoff_max_s)
        self._decode_backoff = Backoff(30.0, first=0.5)
        self._delivery_errors: list[str] = []

    # -- the loop -------------------------------------------------------------------------
    def _start(self) -> None:
        self._producer = make_producer(self.settings, **{"linger.ms": 0})

    def _turn(self) -> None:
        c, now = self.config, time.monotonic()
        batch_s = c.batch_ms / 1000
        if self._paused:
            # Keep the membership alive (rebalance callbacks, heartbeats) and read nothing
            # until the batch is written.
            self._consume(1, min(0.2, max(0.0, self._retry_at - now)))
        else:
            timeout = 0.2
            if self._batch.offsets:
                timeout = max(0.0, min(timeout, self._batch.started + batch_s - now))
            self._consume(c.batch_size - len(self._batch), timeout)
        batch, now = self._batch, time.monotonic()
        due = batch.offsets and (len(batch) >= c.batch_size or now >= batch.started + batch_s)
        if due and now >= self._retry_at:
            delay = self._flush()
            if delay is None:
                self._retry_at = 0.0
            else:
                self._retry_at = time.monotonic() + delay
                if not self._paused:
                    self._pause()

    def _stopping(self) -> None:
        # One last try to write what was read (the next start re-reads it otherwise, which
        # an idempotent sink makes harmless).
        if self._batch.offsets:
            self._flush()

    def _finish(self) -> None:
        """The consumer stays open until `close()` (the caller's, after `run`)."""

    def close(self) -> None:
        super().close()
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        self.sink.release()

    def _consume(self, count: int, timeout: float) -> None:
        assert self._consumer is not None
        if count <= 0:
            return
        for msg in self._consumer.consume(count, timeout):
            if has_record(msg) and not self._take(msg):
                break  # stopping while the registry is down: the rest is read again later

    def _take(self, msg: Message) -> bool:
        key, offset = _key(msg), msg.offset() or 0
        if key not in self._assigned or offset < self._next.get(key, 0):
            return True  # revoked meanwhile, or re-delivered after a pause: already held
        value = decode_with_retry(
            self.decode, msg.value() or b"", self._stop, self.undecodable, self._decode_backoff
        )
        if value is None:
            return False
        batch = self._batch
        if not batch.offsets:
            batch.started = time.monotonic()
        self.counts.consumed += 1
        item = value if isinstance(value, Failure) else self.sink.item(msg, value)
        if isinstance(item, Failure):
            batch.letters.append(Letter(msg, REASON_UNDECODABLE, item))
        elif isinstance(item, Skip):
            self.counts.skipped[item.reason] += 1
        else:
            batch.items.append(item)
            batch.messages.append(msg)
        batch.offsets[key] = offset + 1
        self._next[key] = offset + 1
        self.counts.in_flight = len(batch)
        return True

    # -- writing and committing ---------------------------------------------------------
    def _flush(self) -> float | None:
        """Dead letters acked, the batch written, then offsets committed: None when done,
        else the seconds to wait before trying again (nothing committed to Kafka)."""
        batch = self._batch
        retried: tuple[type[Exception], ...] = (
            *self.sink.transient,
            SinkBackpressure,
            LettersFailed,
        )
        try:
            self._deliver_letters(batch)
            written = self.sink.write(batch) if batch.items else Written(0)
            self._deliver_letters(batch)  # what the sink refused, if anything
        except retried as exc:
            self.ready = False
            self.counts.failures += 1
            self.sink.failed(exc)
            log.warning(
                "batch of %d not written, retrying (offsets not committed): %s",
                len(batch.items),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            delay = self._backoff.next()
            if isinstance(exc, SinkBackpressure) and exc.retry_after is not None:
                delay = exc.retry_after
            return delay
        if self.after_write is not None:
            self.after_write(batch)
        self._commit(batch)
        self.counts.processed += written.processed
        for reason, n in written.skipped.items():
            self.counts.skipped[reason] += n
        self._batch = Batch()
        self.counts.in_flight = 0
        self._backoff.reset()
        self.ready = True
        if self._paused:
            self._resume()
        return None

    def _deliver_letters(self, batch: Batch[T]) -> None:
        if not batch.letters:
            return
        assert self._producer is not None
        topic = self.config.dlq_topic
        self._delivery_errors = []
        for letter in batch.letters:
            msg = letter.message
            self._producer.produce(
                topic,
                key=msg.key(),
                value=msg.value(),
                headers=letter_headers(letter.reason, letter.failure, Origin.of_message(msg)),
                on_delivery=self._delivered,
            )
        if self._producer.flush(30) or self._delivery_errors:
            raise LettersFailed(
                f"dead-letter topic {topic}: "
                f"{self._delivery_errors[0] if self._delivery_errors else 'no ack in 30s'}"
            )
        for letter in batch.letters:
            msg = letter.message
            log.warning(
                "record %s[%d]@%d dead-lettered to %s (%s): %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                topic,
                letter.reason,
                letter.failure.message,
                extra={"reason": letter.reason, "error_class": letter.failure.error_class},
            )
            self.counts.dead_lettered[letter.reason] += 1
        batch.letters = []  # delivered: a retry of the items does not send them twice

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _commit(self, batch: Batch[T]) -> None:
        self.commit([TopicPartition(t, p, at) for (t, p), at in batch.offsets.items()])

    def _pause(self) -> None:
        assert self._consumer is not None
        self._paused = self.counts.paused = True
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        if tps:
            self._consumer.pause(tps)
        log.warning("%s: write failed; partitions paused until it works", self.component)

    def _resume(self) -> None:
        assert self._consumer is not None
        self._paused = self.counts.paused = False
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        if tps:
            self._consumer.resume(tps)
        log.info("%s: batch written, partitions resumed", self.component)

    # -- rebalances (inside consume, on the loop's thread) -----------------------------
    def _assigned_now(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop((tp.topic, tp.partition), None)
        if self._paused and partitions:
            consumer.pause(partitions)

    def _revoking(self, partitions: list[TopicPartition]) -> None:
        # Write and commit what was read before another member takes over; if that fails,
        # it re-reads those records (and the idempotent sink drops what this one wrote).
        if self._batch.offsets:
            self._flush()

    def _released(self, partitions: list[TopicPartition], lost: bool) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._next.pop(key, None)
        self._batch.forget(gone)


class LettersFailed(KeelError):
    """The dead-letter topic did not ack: nothing may be committed past those records."""


def _key(msg: Message) -> Key:
    return (msg.topic() or "", msg.partition() or 0)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)
