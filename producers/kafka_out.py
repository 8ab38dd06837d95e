"""The producer wrapper shared by the HTTP API and the SDK.

One confluent-kafka producer (`acks=all`, idempotent, bounded queue, bounded delivery
time) served by a poll thread. Delivery reports are gathered per *batch*: the callback of
the batch's last report wakes the waiter once, so a batch of 100 costs one cross-thread
wake-up, not 100 (that is what keeps the asyncio loop cheap under load).

Measured alternative, not kept: polling from the asyncio loop instead (a 1 ms timer plus a
poll after each produce) saves the hand-off, but at the benchmark's fixed concurrency the
single-event path waits on acks, not CPU, and the loop's timer granularity added ~1 ms to
each answer (6.0k against 7.2k requests/s, bench/RESULTS.md); the thread, blocked in
poll(), runs a report as soon as it lands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Producer

from keel.kafka import PRODUCER_DEFAULTS, security_cause
from keel.producers.errors import Backpressure, DeliveryFailed
from keel.settings import KeelSettings, get_settings

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05
PROBE_INTERVAL_S = 1.0


class Outgoing(NamedTuple):
    """One encoded event ready for Kafka."""

    topic: str
    key: bytes
    value: bytes
    event_id: str


class Delivery(NamedTuple):
    """What the broker said about one event: its place on Kafka, or why it is not there.
    (A named tuple: one is built per event on the hot path, at a third of a frozen
    dataclass's cost.)"""

    event_id: str
    topic: str
    partition: int | None = None
    offset: int | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


Waker = Callable[[list[Delivery]], None]


class _Batch:
    """Collects the delivery reports of one batch; calls `done` once when all arrived."""

    __slots__ = ("count", "done", "last", "results")

    def __init__(self, size: int, done: Waker) -> None:
        self.results: list[Delivery | None] = [None] * size
        self.last = size - 1
        self.done = done
        # Reports come from the poll thread, and from the caller's thread for events that
        # could not be queued at all. next() on a count is atomic (one C call under the
        # GIL), so exactly one report draws the last number: no lock per event.
        self.count = itertools.count()

    def report(self, index: int, delivery: Delivery) -> None:
        self.results[index] = delivery
        if next(self.count) == self.last:
            self.done([r for r in self.results if r is not None])


def _error_of(err: KafkaError) -> Exception:
    if err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT):
        return Backpressure(f"broker did not acknowledge in time: {err.str()}", retry_after=2.0)
    return DeliveryFailed.from_kafka_error(err, "producing")


class EventProducer:
    """Produces encoded events and reports per event; no network I/O until `start()`."""

    def __init__(
        self, settings: KeelSettings | None = None, *, config: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self._config = config or {}
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._broker_down = threading.Event()
        self._last_probe = 0.0
        self._handback: _Handback | None = None
        # Why the brokers refuse this producer, when the reason is security (one line naming
        # the principal; never the password): shown by /readyz. A fatal one stays.
        self.security_problem: str | None = None
        self._fatal_problem = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._producer is not None:
            return
        s = self.settings
        timeout_ms = int(s.ingest_delivery_timeout_s * 1000)
        config = {
            **PRODUCER_DEFAULTS,
            "linger.ms": s.ingest_linger_ms,
            # Bounded time: librdkafka gives up on an event after this (the caller answers 503).
            "message.timeout.ms": timeout_ms,
            "request.timeout.ms": min(timeout_ms, 30000),
            # Bounded memory: beyond this, produce() raises BufferError (503 at once).
            "queue.buffering.max.messages": s.ingest_queue_max_messages,
            "queue.buffering.max.kbytes": 262144,
            "error_cb": self._on_error,
            # librdkafka's own log lines go through logging (JSON lines), not raw stderr.
            "logger": logging.getLogger("librdkafka"),
            **self._config,
        }
        self._producer = Producer(s.kafka_config(**config))
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_loop, name="keel-producer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (up to `timeout`), stop the poll thread; return what is left."""
        if self._producer is None:
            return 0
        left = self._producer.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._producer = None
        return int(left)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("EventProducer.start() was not called")
        return self._producer

    # -- state ----------------------------------------------------------------------------
    @property
    def broker_down(self) -> bool:
        return self._broker_down.is_set()

    def queued(self) -> int:
        return len(self._producer) if self._producer is not None else 0

    def broker_reachable(self, timeout: float = 2.0, topics: Iterable[str] = ()) -> bool:
        """The brokers answer, and this producer's principal may see `topics` (the ones it
        writes): a missing ACL is a security problem naming the principal and the topic."""
        try:
            self.producer.list_topics(timeout=timeout)
            if not self._fatal_problem:
                self.security_problem = None  # authenticated and trusted again
            for topic in topics:
                found = self.producer.list_topics(topic, timeout=timeout).topics.get(topic)
                error = found.error if found is not None else None
                if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                    self.security_problem = (
                        f"principal {self.settings.sasl_username!r} is not authorized to write "
                        f"topic {topic}: {error.str()}"
                    )
        except Exception:
            return False
        return self.security_problem is None

    def _on_error(self, err: KafkaError) -> None:
        cause = security_cause(err, self.settings)
        if cause is not None:
            if cause != self.security_problem:
                log.error("kafka: %s", cause)
            self.security_problem = cause
            self._fatal_problem = self._fatal_problem or err.fatal()
            return
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._broker_down.is_set():
                log.warning("all brokers down: answering 503 until one is back")
            self._broker_down.set()
        else:
            log.info("producer: %s", err.str())

    def _poll_loop(self) -> None:
        producer = self._producer
        assert producer is not None  # set before the thread starts
        while not self._stop.is_set():
            producer.poll(POLL_INTERVAL_S)
            if (
                self._broker_down.is_set()
                and time.monotonic() - self._last_probe > PROBE_INTERVAL_S
            ):
                self._last_probe = time.monotonic()
                try:
                    producer.list_topics(timeout=0.5)
                except Exception:
                    continue
                log.info("broker reachable again")
                self._broker_down.clear()

    # -- producing ------------------------------------------------------------------------
    def produce_batch(self, items: Sequence[Outgoing], done: Waker) -> None:
        """Hand `items` to librdkafka; `done(deliveries)` runs once on the poll thread when
        every item has a report. Raises Backpressure when none could be queued; items after
        a full queue get a Backpressure delivery (the caller answers per item)."""
        if self._broker_down.is_set():
            raise Backpressure("Kafka is unreachable", retry_after=2.0)
        if not items:
            done([])
            return
        producer = self.producer
        batch = _Batch(len(items), done)
        for index, item in enumerate(items):
            try:
                producer.produce(
                    item.topic,
                    item.value,
                    item.key,
                    on_delivery=_reporter(batch, index, item),
                )
            except BufferError:
                if index == 0:
                    raise Backpressure("producer queue full", retry_after=1.0) from None
                for rest in range(index, len(items)):
                    failed = items[rest]
                    batch.report(
                        rest,
                        Delivery(
                            failed.event_id,
                            failed.topic,
                            error=Backpressure("producer queue full", retry_after=1.0),
                        ),
                    )
                break
            except Exception as exc:  # KafkaException: e.g. message too large, unknown topic
                batch.report(index, Delivery(item.event_id, item.topic, error=_wrap(exc)))

    async def send(self, items: Sequence[Outgoing], timeout: float | None = None) -> list[Delivery]:
        """Produce and wait (asyncio) for every report, at most the delivery timeout + 1 s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Delivery]] = loop.create_future()
        handback = self._handback
        if handback is None or handback.loop is not loop:
            handback = self._handback = _Handback(loop)

        def done(deliveries: list[Delivery]) -> None:
            handback.push(future, deliveries)

        self.produce_batch(items, done)
        limit = timeout if timeout is not None else self.settings.ingest_delivery_timeout_s + 1
        # librdkafka reports every event within message.timeout.ms; this is the backstop
        # (a plain timer: wait_for + shield cost a task and two futures per request).
        timer = loop.call_later(limit, _expire, future, items)
        try:
            return await future
        finally:
            timer.cancel()


class _Handback:
    """Settles the futures of finished batches on their loop, with one wake-up per burst:
    the acks of many requests often land in one poll() (one produce response), and each
    call_soon_threadsafe is a write to the loop's self-pipe."""

    __slots__ = ("lock", "loop", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.ready: list[tuple[asyncio.Future[list[Delivery]], list[Delivery]]] = []

    def push(self, future: asyncio.Future[list[Delivery]], deliveries: list[Delivery]) -> None:
        with self.lock:
            self.ready.append((future, deliveries))
            first = len(self.ready) == 1
        if first:  # later pushes ride on the wake-up already on its way
            self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
        for future, deliveries in ready:
            _settle(future, deliveries)


def _settle(future: asyncio.Future[list[Delivery]], deliveries: list[Delivery]) -> None:
    if not future.done():
        future.set_result(deliveries)


def _expire(future: asyncio.Future[list[Delivery]], items: Sequence[Outgoing]) -> None:
    _settle(
        future,
        [
            Delivery(i.event_id, i.topic, error=Backpressure("no ack in time", retry_after=2))
            for i in items
        ],
    )


def _wrap(exc: Exception) -> Exception:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], KafkaError):
        return _error_of(args[0])
    return DeliveryFailed(str(exc))


def _reporter(batch: _Batch, index: int, item: Outgoing) -> Callable[[Any, Any], None]:
    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            batch.report(index, Delivery(item.event_id, item.topic, error=_error_of(err)))
        else:
            batch.report(index, Delivery(item.event_id, item.topic, msg.partition(), msg.offset()))

    return on_delivery
