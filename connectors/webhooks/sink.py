"""The webhook sink on the consumer runtime (`keel.runtime.StreamRunner`): one consumer
group on the events topics, each event decoded from Keel's Avro through the registry and
delivered to every subscriber that wants it, signed (`signing`), retried by the policy
(`policy`), given up to the subscriber's dead-letter topic.

Delivery is at least once, in order per subscriber and partition: each (subscriber,
partition) pair is a lane (an asyncio task) that sends one event at a time, and a
subscriber has at most `concurrency` requests in flight across its lanes. An event is
finished for a subscriber when it answered 2xx or when the event was written (and
acknowledged) to the subscriber's dead-letter topic; the runtime's offset tracker commits
a partition only past events finished for every subscriber. A crash re-sends what was not
committed: receivers dedup by `Keel-Event-Id`.

A slow or failing subscriber holds back only its own lanes while the others go on, up to
`max_pending` events read ahead per partition; then the partition waits for it (paused,
resumed at half). The wait is bounded: each attempt times out, and an event is given up
(dead-lettered) after `max_attempts` attempts or `max_age_s` seconds.

Threads: the runtime's loop (consume, decode, commit, rebalances, dead-letter acks) runs on
a thread of its own; the HTTP deliveries on the asyncio loop. They meet in `submit` (the
loop hands records over with `call_soon_threadsafe`) and in each record's tracker entry
(finished on the asyncio thread, read by the loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from confluent_kafka import Message, Producer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from keel.backoff import Backoff
from keel.connectors.webhooks.errors import WebhookError
from keel.connectors.webhooks.policy import (
    REASON_PERMANENT,
    REASON_UNDECODABLE,
    Outcome,
    RetryPolicy,
    Verdict,
    classify_error,
    classify_status,
)
from keel.connectors.webhooks.signing import (
    SIGNATURE_HEADER,
    delivery_id,
    event_body,
    signature_header,
)
from keel.connectors.webhooks.subscriptions import Subscription
from keel.deadletters import H_REPLAYED_FROM, Failure, Origin, header_map, letter_headers
from keel.health import Checks, beating, check, routes
from keel.kafka import TopicSpec, ensure_topics, make_admin, make_producer
from keel.metrics import ConsumerMetrics
from keel.offsets import Entry, Key
from keel.runtime import (
    RunnerConfig,
    StreamingSink,
    StreamRunner,
    Tracked,
    decode_with_retry,
    hand_off,
)
from keel.schemas.catalog import load_catalog
from keel.schemas.errors import DecodeError, RegistryError
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

USER_AGENT = "keel-webhooks/1"
# Extra dead-letter headers (beside keel.deadletters' contract): who gave up, how often.
H_SUBSCRIBER = "keel.webhooks.subscriber"
H_ATTEMPTS = "keel.webhooks.attempts"
H_EVENT_ID = "keel.event_id"
_ANSWER_SNIPPET = 300  # bytes of a failed answer kept in logs and dead letters
# The read-ahead is bounded per partition (`max_pending`); the runtime's own bound on what
# is in flight across partitions is only a backstop.
_MAX_IN_FLIGHT = 1_000_000


@dataclass
class Target:
    """A subscription with its effective settings and its HTTP client."""

    sub: Subscription
    policy: RetryPolicy
    timeout_s: float
    concurrency: int
    dead_letter_topic: str
    secret: str = field(repr=False)
    semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.sub.name

    @classmethod
    def of(cls, sub: Subscription, settings: KeelSettings) -> Target:
        concurrency = sub.concurrency or settings.webhooks_concurrency
        return cls(
            sub=sub,
            policy=RetryPolicy(
                max_attempts=sub.max_attempts or settings.webhooks_max_attempts,
                max_age_s=sub.max_age_s or settings.webhooks_max_age_s,
                initial_s=settings.webhooks_backoff_initial_s,
                max_s=settings.webhooks_backoff_max_s,
            ),
            timeout_s=sub.timeout_s or settings.webhooks_timeout_s,
            concurrency=concurrency,
            dead_letter_topic=sub.dead_letter_topic or settings.webhooks_dlq_prefix + sub.name,
            secret=sub.secret.get_secret_value(),
            semaphore=asyncio.Semaphore(concurrency),
        )


@dataclass
class Record:
    """One consumed message, decoded (or with the reason it could not be)."""

    message: Message
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    event_id: str = ""
    event_type: str = ""
    body: bytes = b""
    undecodable: Failure | None = None  # the decoding error, when there is one
    replayed_from: str = ""  # `keel dlq replay`'s <dlq topic>/<partition>@<offset>


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.delivered = Counter(
            "keel_webhooks_delivered",
            "Events a subscriber answered 2xx.",
            ["subscriber"],
            registry=r,
        )
        self.attempts = Counter(
            "keel_webhooks_attempts",
            "POSTs made, by verdict (success, retry, permanent).",
            ["subscriber", "verdict"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "keel_webhooks_dead_lettered",
            "Events given up and written to the subscriber's dead-letter topic.",
            ["subscriber", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "keel_webhooks_latency_seconds",
            "From the event's Kafka timestamp to the subscriber's 2xx.",
            ["subscriber"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        # keel_consumer_*{component="webhooks"}: processed counts deliveries a subscriber
        # took, failures the attempts retried; the figures above break them down by subscriber.
        self.consumer = ConsumerMetrics("webhooks", r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _topics(settings: KeelSettings) -> list[str]:
    topics = [t.strip() for t in settings.webhooks_topics.split(",") if t.strip()]
    if not topics:
        raise WebhookError("KEEL_WEBHOOKS_TOPICS names no topic")
    return topics


class WebhookSink(StreamingSink):
    """The sink (see the module docstring). `run()` until `stop()`."""

    component = "webhooks"

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        settings: KeelSettings,
        *,
        serde: AvroSerde | None = None,
        http_port: int | None = None,
        batch_size: int = 500,
    ) -> None:
        if not subscriptions:
            raise WebhookError("no subscriptions: nothing to deliver to")
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.topics = _topics(settings)
        self.serde = serde
        self.http_port = settings.webhooks_http_port if http_port is None else http_port
        self.metrics = SinkMetrics()
        self.counts = self.metrics.consumer  # what the progress log and /metrics report
        self.targets: list[Target] = []
        self.runner = StreamRunner(
            self,
            settings,
            RunnerConfig(
                group=settings.webhooks_group,
                topics=self.topics,
                batch_size=batch_size,
                session_timeout_ms=settings.webhooks_session_timeout_ms,
                progress_interval_s=settings.webhooks_progress_interval_s,
                max_in_flight=_MAX_IN_FLIGHT,
                commit_interval_s=settings.webhooks_commit_interval_ms / 1000,
                settle_timeout_s=min(settings.webhooks_timeout_s, 10.0),
            ),
            self.counts,
            # Decoding waits out a registry outage on the loop's thread: leave room before
            # the group decides this member is stuck.
            **{"max.poll.interval.ms": 600_000},
        )
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._read_ahead_full: set[Key] = set()  # paused partitions (the loop's thread)
        self._decode_backoff = Backoff(30.0, first=0.5)
        # On the asyncio thread only: a lane per (partition, subscriber) and its task.
        self._lanes: dict[Key, dict[str, asyncio.Queue[tuple[Record, Entry]]]] = {}
        self._tasks: dict[Key, list[asyncio.Task[None]]] = {}
        self._children: dict[str, tuple[Any, Any, Any]] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to finish (safe from a signal handler)."""
        self._stopping.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            return
        self.targets = [Target.of(s, self.settings) for s in self.subscriptions]
        await asyncio.to_thread(self._prepare)
        for target in self.targets:
            target.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=target.timeout_s),
                connector=aiohttp.TCPConnector(limit=target.concurrency),
                headers={"User-Agent": USER_AGENT},
            )
        http = await self._start_http()
        log.info(
            "webhook sink reading %s as group %s for %d subscriber(s)",
            ",".join(self.topics),
            self.settings.webhooks_group,
            len(self.targets),
            extra={"subscribers": [t.name for t in self.targets]},
        )
        try:
            await asyncio.to_thread(self.runner.run, self._stopping)
        finally:
            self._stopping.set()
            tasks = [task for tasks in self._tasks.values() for task in tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for target in self.targets:
                if target.session is not None:
                    await target.session.close()
            if http is not None:
                await http.cleanup()
            log.info("webhook sink stopped")

    def _prepare(self) -> None:
        """Dead-letter topics exist before anything could need one."""
        settings = self.settings
        admin = make_admin(settings)
        metadata = admin.list_topics(timeout=15)
        partitions = max(
            (len(metadata.topics[t].partitions) for t in self.topics if t in metadata.topics),
            default=1,
        )
        dlqs = [TopicSpec(t.dead_letter_topic, partitions) for t in self.targets]
        ensure_topics(admin, dlqs, settings=settings)
        if self.serde is None:
            self.serde = AvroSerde(RegistryClient(settings.schema_registry_url), load_catalog())

    # -- the runtime's hooks (on its thread) ---------------------------------------------
    def open(self) -> None:
        self._producer = make_producer(self.settings, **{"linger.ms": 0})

    def close(self) -> None:
        """The loop left the group: the last dead letters' acks."""
        if self._producer is not None:
            self._producer.flush(10)

    def submit(self, records: list[Tracked]) -> None:
        """Decode (waiting out a registry outage), say how many subscribers each event
        waits for, and hand the events to the lanes on the asyncio thread."""
        handed: list[tuple[Record, Entry, list[Target]]] = []
        for index, (msg, entry) in enumerate(records):
            record = self._decode(msg)
            if record is None:
                # Stopping while the registry is down: the rest is neither delivered nor
                # committed, so the next start reads it again.
                for _msg, left in records[index:]:
                    left.cancelled = True
                break
            targets = self._targets_for(record)
            entry.expect(len(targets))
            if targets:
                handed.append((record, entry, targets))
        if handed and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, handed)

    def tick(self, wait: float = 0.0) -> None:
        if self._producer is not None:
            self._producer.poll(wait)  # dead-letter acks finish their events

    def pausing(self, assigned: set[Key]) -> set[Key]:
        """A partition whose read-ahead is full waits; it resumes at half."""
        high = self.settings.webhooks_max_pending
        pending = self.runner.tracker.pending
        full = {
            tp
            for tp in assigned
            if pending(tp) >= high or (tp in self._read_ahead_full and pending(tp) > high // 2)
        }
        if full - self._read_ahead_full:
            log.info("read-ahead full, waiting on %s", sorted(full - self._read_ahead_full))
        self._read_ahead_full = full
        return full

    def gone(self, partitions: set[Key]) -> None:
        self._read_ahead_full -= partitions
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_lanes, partitions)

    def _decode(self, msg: Message) -> Record | None:
        assert self.serde is not None
        _kind, timestamp_ms = msg.timestamp()
        record = Record(
            msg, msg.topic() or "", msg.partition() or 0, msg.offset() or 0, timestamp_ms
        )
        headers = msg.headers()
        if headers:  # rare: most events carry none
            record.replayed_from = header_map(headers).get(H_REPLAYED_FROM, "")
        event = decode_with_retry(
            self.serde.decode_plain,
            msg.value() or b"",
            self._stopping,
            (RegistryError, DecodeError, ValueError),
            self._decode_backoff,
        )
        if event is None:
            return None
        if isinstance(event, Failure):
            record.undecodable = event
            return record
        event_type = event.get("type")
        if not isinstance(event_type, str):
            record.undecodable = Failure(
                "the record has no string 'type' field: not a Keel event",
                f"{DecodeError.__module__}.{DecodeError.__qualname__}",
            )
            return record
        record.event_type = event_type
        record.event_id = str(event.get("event_id", ""))
        record.body = event_body(event)
        return record

    def _targets_for(self, record: Record) -> list[Target]:
        if record.undecodable:
            targets = self.targets  # nobody can tell who wanted it: every subscriber hears
        else:
            targets = [t for t in self.targets if t.sub.wants(record.event_type)]
        if record.replayed_from:
            # Replayed from a subscriber's dead letters: only that subscriber missed it.
            dlq = record.replayed_from.rsplit("/", 1)[0]
            owners = [t for t in self.targets if t.dead_letter_topic == dlq]
            if owners:
                targets = [t for t in targets if t in owners]
        return targets

    # -- lanes (on the asyncio thread) ----------------------------------------------------
    def _dispatch(self, handed: list[tuple[Record, Entry, list[Target]]]) -> None:
        for record, entry, targets in handed:
            if entry.cancelled:
                continue  # revoked meanwhile: its new owner reads it again
            key = (record.topic, record.partition)
            lanes = self._lanes.setdefault(key, {})
            for target in targets:
                lane = lanes.get(target.name)
                if lane is None:
                    lane = lanes[target.name] = asyncio.Queue()
                    task = asyncio.create_task(self._lane(target, lane))
                    self._tasks.setdefault(key, []).append(task)
                lane.put_nowait((record, entry))

    def _cancel_lanes(self, partitions: set[Key]) -> None:
        for key in partitions:
            self._lanes.pop(key, None)
            for task in self._tasks.pop(key, ()):
                task.cancel()

    async def _lane(self, target: Target, lane: asyncio.Queue[tuple[Record, Entry]]) -> None:
        """One subscriber's events of one partition, one at a time, in offset order."""
        while True:
            record, entry = await lane.get()
            if entry.cancelled:
                continue
            await self._deliver(target, record)
            entry.finish()

    async def _deliver(self, target: Target, record: Record) -> None:
        """Until the subscriber took it, or it is in the dead-letter topic."""
        if record.undecodable:
            await self._dead_letter(target, record, REASON_UNDECODABLE, record.undecodable, 0)
            return
        started = time.monotonic()
        ident = delivery_id(target.name, record.topic, record.partition, record.offset)
        attempt = 0
        while True:
            attempt += 1
            async with target.semaphore:
                outcome = await self._attempt(target, record, attempt, ident)
            if outcome.verdict is Verdict.SUCCESS:
                self.counts.processed += 1
                ok_attempts, delivered, latency = self._success_metrics(target.name)
                ok_attempts.inc()
                delivered.inc()
                if record.timestamp_ms > 0:
                    latency.observe(max(0.0, time.time() - record.timestamp_ms / 1000))
                return
            self.metrics.attempts.labels(target.name, outcome.verdict.value).inc()
            if outcome.verdict is Verdict.PERMANENT:
                reason = REASON_PERMANENT
            else:
                age = time.monotonic() - started
                delay, reason = target.policy.next_retry(attempt, age, outcome.retry_after)
                if delay is not None:
                    self.counts.failures += 1
                    log.info(
                        "%s: attempt %d failed (%s), retrying in %.2fs",
                        target.name,
                        attempt,
                        outcome.detail,
                        delay,
                        extra={"event_id": record.event_id, "subscriber": target.name},
                    )
                    await asyncio.sleep(delay)  # the backoff itself
                    continue
            failure = Failure(outcome.detail, outcome.error_class)
            await self._dead_letter(target, record, reason, failure, attempt)
            return

    def _success_metrics(self, name: str) -> tuple[Any, Any, Any]:
        # The labelled children looked up once per subscriber: `labels()` takes a lock and
        # builds a key on every call, measurable at thousands of events a second.
        children = self._children.get(name)
        if children is None:
            m = self.metrics
            children = self._children[name] = (
                m.attempts.labels(name, Verdict.SUCCESS.value),
                m.delivered.labels(name),
                m.latency.labels(name),
            )
        return children

    async def _attempt(self, target: Target, record: Record, attempt: int, ident: str) -> Outcome:
        assert target.session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(target.secret, record.body),
            "Keel-Event-Id": record.event_id,
            "Keel-Event-Type": record.event_type,
            "Keel-Delivery-Id": ident,
            "Keel-Attempt": str(attempt),
        }
        try:
            async with target.session.post(
                str(target.sub.url), data=record.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    await response.read()  # drained: the connection goes back to the pool
                    return Outcome(Verdict.SUCCESS, f"HTTP {response.status}")
                snippet = (await response.content.read(_ANSWER_SNIPPET)).decode("utf-8", "replace")
                return classify_status(
                    response.status, response.headers.get("Retry-After"), snippet.strip()
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp and the OS raise many unrelated types
            return classify_error(exc)

    async def _dead_letter(
        self, target: Target, record: Record, reason: str, error: Failure, attempts: int
    ) -> None:
        """Write the record to the subscriber's dead-letter topic; return once the broker
        acknowledged it (retrying meanwhile: committing past it otherwise would lose it)."""
        origin = Origin.of_message(record.message)
        extra = [
            (H_SUBSCRIBER, target.name),
            (H_ATTEMPTS, str(attempts)),
            (H_EVENT_ID, record.event_id),
        ]
        headers = letter_headers(reason, error, origin, extra)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        assert self._producer is not None
        hand_off(
            self._producer,
            target.dead_letter_topic,
            record.message,
            headers,
            acked=lambda: _set_soon(loop, done),
        )
        await done
        self.counts.dead_lettered[reason] += 1
        self.metrics.dead_lettered.labels(target.name, reason).inc()
        log.warning(
            "%s: event dead-lettered to %s (%s): %s",
            target.name,
            target.dead_letter_topic,
            reason,
            error.message,
            extra={"event_id": record.event_id, "subscriber": target.name, "reason": reason},
        )

    # -- health ---------------------------------------------------------------------------
    async def _start_http(self) -> web.AppRunner | None:
        if not self.http_port:
            return None

        async def healthz(_app: web.Application) -> Checks:
            return {"loop": beating(self.runner.heartbeat, 60.0)}

        async def readyz(app: web.Application) -> Checks:
            group = check(self.runner.ready, group=self.settings.webhooks_group)
            return {**await healthz(app), "group": group}

        async def metrics(_app: web.Application) -> bytes:
            return self.metrics.render()

        app = web.Application()
        app.add_routes(routes(healthz=healthz, readyz=readyz, metrics=metrics))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.http_port).start()
        log.info("health and metrics on port %d", self.http_port)
        return runner


def _set_soon(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
    """Resolve `done` on its loop (called from the thread that polls the producer)."""
    loop.call_soon_threadsafe(done.set_result, None)
