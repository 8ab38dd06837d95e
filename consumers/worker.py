"""The job worker: one consumer group per job type on the core's consumer runtime
(`keel.runtime.StreamRunner`: jobs of one key in order on per-key lanes, a bounded number in
flight, offsets committed only past jobs whose side effect, or hand-off to the retry or
dead-letter topic, is done).

What is the jobs' own (`JobRunner`, a `keel.runtime.StreamingSink`): retries read before
they are due wait in a `DelayQueue` (not blocking other jobs; the retry partitions pause
when too many wait); each lane checks the idempotency store (one round trip per batch),
runs the handler, records the done key, or hands a failed job to the retry ladder / dead
letters (acked before the job counts as finished).

A `Worker` runs the runners of several job types in one process, with the health server,
and stops them on SIGTERM: in-flight jobs get `jobs_shutdown_timeout_s` to finish, then
the finished prefix is committed, the rest is handed back, and the consumers leave their
groups.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient

from keel.backoff import Backoff
from keel.consumers.decoding import JobDecoder
from keel.consumers.errors import StoreError, UndecodableJob, is_retriable
from keel.consumers.idempotency import DoneStore
from keel.consumers.job import Job, JobHandler
from keel.consumers.metrics import JobMetrics
from keel.consumers.retry import (
    REASON_UNDECODABLE,
    DelayQueue,
    HeaderList,
    Origin,
    RetryPolicy,
    attempts_of,
    dead_letter_headers,
    due_at_of,
    header_map,
    retry_headers,
)
from keel.deadletters import Failure
from keel.health import Check, Checks, HealthServer, beating, check, metrics_text
from keel.kafka import TopicSpec, ensure_topics, make_admin, make_producer
from keel.offsets import Entry, Key
from keel.runtime import (
    Lanes,
    RunnerConfig,
    StreamingSink,
    StreamRunner,
    Tracked,
    decode_with_retry,
    hand_off,
)
from keel.settings import KeelSettings, get_settings

log = logging.getLogger(__name__)

STALL_SECONDS = 60.0  # a poll loop silent for this long is reported unhealthy
_MARK_DONE_TRIES = 3
_NOT_OURS = object()  # another record type on a shared topic


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs; `from_settings` reads the KEEL_JOBS_* settings."""

    concurrency: int = 4
    max_in_flight: int = 1000
    max_delayed: int = 10_000
    batch_size: int = 500
    commit_interval_s: float = 0.5
    shutdown_timeout_s: float = 20.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    consumer_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: KeelSettings, **changes: Any) -> WorkerConfig:
        config = cls(
            concurrency=settings.jobs_concurrency,
            max_in_flight=settings.jobs_max_in_flight,
            commit_interval_s=settings.jobs_commit_interval_ms / 1000,
            shutdown_timeout_s=settings.jobs_shutdown_timeout_s,
            policy=RetryPolicy.from_text(settings.jobs_retry_ladder, settings.jobs_retry_jitter),
            consumer_overrides={"session.timeout.ms": settings.jobs_session_timeout_ms},
        )
        return cls(**{**config.__dict__, **changes})


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobRunner(StreamingSink):
    """One job type's consumer group member (see the module docstring); `run(stop)` on a
    thread of its own."""

    def __init__(
        self,
        handler: JobHandler,
        *,
        decoder: JobDecoder,
        producer: Producer,
        store: DoneStore | None,
        metrics: JobMetrics,
        config: WorkerConfig,
        settings: KeelSettings | None = None,
        group_id: str | None = None,
    ) -> None:
        self.handler = handler
        self.name = handler.name
        self.component = f"jobs.{handler.name}"
        self.topics = handler.topics
        self.decoder = decoder
        self.producer = producer
        self.store = store if handler.idempotent else None
        self.config = config
        self.settings = settings or get_settings()
        self.group_id = group_id or f"keel.jobs.{handler.name}"
        self.delayed = DelayQueue()
        self.error: BaseException | None = None
        self.loop = StreamRunner(
            self,
            self.settings,
            RunnerConfig(
                group=self.group_id,
                topics=[self.topics.source, self.topics.retry],
                batch_size=config.batch_size,
                max_in_flight=config.max_in_flight,
                commit_interval_s=config.commit_interval_s,
                settle_timeout_s=config.shutdown_timeout_s,
            ),
            metrics.consumers.add(self.component),
            **config.consumer_overrides,
        )
        self.tracker = self.loop.tracker
        self.lanes = Lanes(
            f"job-{self.name}", config.concurrency, self._process, self.loop.progress
        )
        # Metric children bound once: label lookups are not free on the hot path.
        self._m_done = metrics.done.labels(self.name)
        self._m_dup = metrics.duplicates.labels(self.name)
        self._m_skipped = metrics.skipped.labels(self.name)
        self._m_retried = metrics.retried.labels(self.name)
        self._m_failed_retriable = metrics.failed.labels(self.name, "true")
        self._m_failed_permanent = metrics.failed.labels(self.name, "false")
        self._m_in_flight = metrics.in_flight.labels(self.name)
        self._m_delayed = metrics.delayed.labels(self.name)
        self._metrics = metrics

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then settle in-flight jobs, commit and leave."""
        log.info(
            "job worker %s: group %s, topics %s + %s, concurrency %s",
            self.name,
            self.group_id,
            self.topics.source,
            self.topics.retry,
            self.config.concurrency,
        )
        try:
            self.loop.run(stop)
        except BaseException as exc:
            self.error = exc
            raise

    # --- the sink, on the loop's thread ------------------------------------------------

    def open(self) -> None:
        self.lanes.start()

    def close(self) -> None:
        self.lanes.stop()

    def submit(self, records: list[Tracked]) -> None:
        """Jobs to their lanes; a retry read before it is due waits in `delayed`."""
        now_ms, retry_topic, ready = _now_ms(), self.topics.retry, []
        for msg, entry in records:
            if msg.topic() == retry_topic:
                due = due_at_of(header_map(msg.headers()))
                if due > now_ms:
                    self.delayed.push(due, (msg, entry), group=(retry_topic, msg.partition()))
                    continue
            ready.append((msg, entry))
        if ready:
            self.lanes.route(ready)

    def tick(self, wait: float = 0.0) -> None:
        if self.delayed:
            due = self.delayed.pop_due(_now_ms())
            if due:
                self.lanes.route(due)
        self.producer.poll(wait)  # retry and dead-letter deliveries finish their jobs
        self._m_in_flight.set(self.loop.counts.in_flight)
        self._m_delayed.set(len(self.delayed))

    def held(self) -> int:
        return len(self.delayed)

    def next_due(self) -> float | None:
        due = self.delayed.next_due()
        return None if due is None else (due - _now_ms()) / 1000

    def pausing(self, assigned: set[Key]) -> set[Key]:
        """The retry partitions, while too many retries wait for their due time."""
        if len(self.delayed) < self.config.max_delayed:
            return set()
        return {tp for tp in assigned if tp[0] == self.topics.retry}

    def revoking(self, partitions: set[Key]) -> None:
        """Retries waiting for their due time are handed back at once."""
        for _msg, entry in self.delayed.drop_groups(partitions):
            entry.cancelled = True

    gone = revoking  # lost: the same, and their new owner runs them

    # --- lanes -------------------------------------------------------------------------

    def _decode(self, data: bytes) -> Any:
        wanted = self.handler.record_name
        if wanted is not None and self.decoder.record_name(data) != wanted:
            return _NOT_OURS
        return self.decoder.decode(data)

    def _process(self, items: list[Tracked]) -> None:
        name = self.name
        backoff = Backoff(30.0, first=0.5)
        stop = self.loop.stop_event
        jobs: list[tuple[Entry, Job, Message]] = []
        for msg, entry in items:
            if entry.cancelled:
                continue
            raw_headers = msg.headers()
            headers = header_map(raw_headers) if raw_headers else {}
            topic = msg.topic() or ""
            record = decode_with_retry(
                self._decode, msg.value() or b"", stop, (UndecodableJob,), backoff
            )
            if record is None:  # stopping while the registry is down: read again later
                entry.cancelled = True
                continue
            if record is _NOT_OURS:
                entry.finish()
                self._m_skipped.inc()
                continue
            if isinstance(record, Failure):
                if self.handler.record_name is not None and topic == self.topics.source:
                    # Poison on a shared topic belongs to its owner's dead letters.
                    entry.finish()
                    self._m_skipped.inc()
                    continue
                origin = Origin.of(
                    headers, topic, msg.partition() or 0, msg.offset() or 0, msg.timestamp()[1]
                )
                self._dead_letter(
                    msg,
                    entry,
                    attempt=attempts_of(headers) + 1,
                    reason=REASON_UNDECODABLE,
                    origin=origin,
                    error=record,
                )
                continue
            job = Job(
                name,
                record,
                msg.key(),
                topic,
                msg.partition() or 0,
                msg.offset() or 0,
                msg.timestamp()[1],
                attempts_of(headers) + 1 if headers else 1,
                headers,
            )
            jobs.append((entry, job, msg))
        if jobs:
            self._run_jobs(jobs)

    def _run_jobs(self, jobs: list[tuple[Entry, Job, Message]]) -> None:
        name, store = self.name, self.store
        done: set[str] = set()
        if store is not None:
            try:
                done = store.done_keys(name, {job.idempotency_key for _, job, _ in jobs})
            except StoreError as exc:
                for entry, job, msg in jobs:
                    self._fail(msg, entry, job, exc)
                return
        handle = self.handler.handle
        finished = 0
        latencies: list[float] = []
        for entry, job, msg in jobs:
            if entry.cancelled:
                continue  # revoked while we worked: the new owner does it
            if store is not None:
                key = job.idempotency_key
                if key in done:
                    entry.finish()
                    self._m_dup.inc()
                    log.info("job %s %s already done: skipped", name, key, extra={"event_id": key})
                    continue
            try:
                outcome = handle(job)
            except Exception as exc:
                self._fail(msg, entry, job, exc)
                continue
            if store is not None:
                self._record_done(store, key, outcome)
                done.add(key)
            entry.finish()
            finished += 1
            created = job.created_at
            if created is not None:
                latencies.append(max(0.0, time.time() - created.timestamp()))
        if finished:
            self.loop.counts.processed += finished
            self._m_done.inc(finished)
            self._metrics.latency.observe_many(name, latencies)

    def _record_done(self, store: DoneStore, key: str, outcome: Any) -> None:
        """The side effect is done: write its key. A store that fails here is retried briefly;
        if it stays down the job still counts as done (it is committed, so it is not read
        again), and only a crash before the commit could repeat it."""
        for attempt in range(_MARK_DONE_TRIES):
            try:
                store.mark_done(self.name, key, outcome)
                return
            except StoreError as exc:
                log.warning("job %s %s: recording done failed (%s)", self.name, key, exc)
                time.sleep(0.1 * 2**attempt)
        log.error("job %s %s: done but not recorded in the idempotency store", self.name, key)

    def _fail(self, msg: Message, entry: Entry, job: Job, exc: BaseException) -> None:
        retriable = is_retriable(exc)
        (self._m_failed_retriable if retriable else self._m_failed_permanent).inc()
        now_ms = _now_ms()
        decision = self.config.policy.decide(job.attempt, retriable, now_ms)
        if decision.retry:
            log.warning(
                "job %s %s failed (attempt %s), retry in %.1fs: %s",
                self.name,
                job.idempotency_key,
                job.attempt,
                (decision.due_at_ms - now_ms) / 1000,
                exc,
                extra={"event_id": job.idempotency_key},
            )
            headers = retry_headers(self.name, decision, job.origin, exc, now_ms)
            self.loop.counts.failures += 1
            self._hand_off(self.topics.retry, msg, headers, entry, self._m_retried.inc)
        else:
            self._dead_letter(
                msg,
                entry,
                attempt=job.attempt,
                reason=decision.reason,
                origin=job.origin,
                error=exc,
            )

    def _dead_letter(
        self,
        msg: Message,
        entry: Entry,
        *,
        attempt: int,
        reason: str,
        origin: Origin,
        error: BaseException | Failure,
    ) -> None:
        log.error(
            "job %s at %s/%s/%s dead-lettered (%s after %s attempts): %s",
            self.name,
            origin.topic,
            origin.partition,
            origin.offset,
            reason,
            attempt,
            error.message if isinstance(error, Failure) else error,
        )
        headers = dead_letter_headers(self.name, attempt, reason, origin, error, now_ms=_now_ms())
        counter = self._metrics.dead_lettered.labels(self.name, reason)

        def dead_lettered() -> None:
            counter.inc()
            self.loop.counts.dead_lettered[reason] += 1

        self._hand_off(self.topics.dlq, msg, headers, entry, dead_lettered)

    def _hand_off(
        self,
        topic: str,
        msg: Message,
        headers: HeaderList,
        entry: Entry,
        on_done: Callable[[], None],
    ) -> None:
        """The job is finished (committable) only once the broker acknowledged it."""

        def acked() -> None:
            entry.finish()
            on_done()

        hand_off(self.producer, topic, msg, headers, acked=acked, abandoned=lambda: entry.cancelled)

    # --- status ------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.loop.ready

    def healthy(self) -> Check:
        if self.error is not None:
            return check(False, error=str(self.error))
        return beating(self.loop.heartbeat, STALL_SECONDS)


class Worker:
    """The runners of several job types in one process, with a health server."""

    def __init__(
        self,
        handlers: Iterable[JobHandler],
        *,
        settings: KeelSettings | None = None,
        decoder: JobDecoder | None = None,
        store: DoneStore | None = None,
        config: WorkerConfig | None = None,
        http_port: int | None = None,
        group_ids: dict[str, str] | None = None,
        topic_partitions: int = 3,
    ) -> None:
        self.settings = settings or get_settings()
        self.handlers = list(handlers)
        if not self.handlers:
            raise ValueError("a worker needs at least one job handler")
        self.config = config or WorkerConfig.from_settings(self.settings)
        self.metrics = JobMetrics()
        self._decoder = decoder
        self._store = store
        self.http_port = self.settings.jobs_http_port if http_port is None else http_port
        self.group_ids = group_ids or {}
        self.topic_partitions = topic_partitions
        self.runners: list[JobRunner] = []
        self.health: HealthServer | None = None
        self.stop_event = threading.Event()

    def ensure_topics(self, admin: AdminClient | None = None) -> None:
        """Create the job topics this worker reads and writes (auto-create is off)."""
        specs = []
        for handler in self.handlers:
            names = [handler.topics.retry, handler.topics.dlq]
            specs += [TopicSpec(name, self.topic_partitions) for name in names]
            if handler.record_name is None:  # a shared source (events) is not ours to create
                # As many partitions as the stream workers give the job topics they write
                # (those of `events`), whichever of the two creates it first.
                partitions = self.settings.streams_source_partitions
                specs.append(TopicSpec(handler.topics.source, partitions))
        ensure_topics(admin or make_admin(self.settings), specs, settings=self.settings)

    def run(self) -> None:
        """Run until `stop()` (or SIGTERM through the CLI); raise what stopped a runner."""
        from keel.consumers.decoding import avro_decoder
        from keel.consumers.idempotency import open_store

        self.ensure_topics()
        decoder = self._decoder or avro_decoder(self.settings)
        store = self._store
        if store is None and any(h.idempotent for h in self.handlers):
            store = open_store(self.settings)
        producer = make_producer(self.settings)
        self.runners = [
            JobRunner(
                handler,
                decoder=decoder,
                producer=producer,
                store=store,
                metrics=self.metrics,
                config=self.config,
                settings=self.settings,
                group_id=self.group_ids.get(
                    handler.name, f"{self.settings.jobs_topic_prefix}keel.jobs.{handler.name}"
                ),
            )
            for handler in self.handlers
        ]
        for handler in self.handlers:
            handler.start()
        if self.http_port >= 0:
            self.health = HealthServer(
                "jobs",
                self.http_port,
                healthz=self.healthy,
                readyz=self.ready,
                metrics=lambda: metrics_text(self.metrics.registry),
            )
            self.health.start()
        threads = []
        for runner in self.runners:
            thread = threading.Thread(
                target=self._run_one, args=(runner,), name=f"poll-{runner.name}"
            )
            thread.start()
            threads.append(thread)
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        finally:
            self.stop_event.set()
            for thread in threads:
                thread.join()
            producer.flush(10)
            for handler in self.handlers:
                handler.close()
            if self._store is None and store is not None:
                store.close()
            if self.health is not None:
                self.health.stop()
        errors = [r.error for r in self.runners if r.error is not None]
        if errors:
            raise errors[0]

    def _run_one(self, runner: JobRunner) -> None:
        try:
            runner.run(self.stop_event)
        except BaseException:
            log.exception("job worker %s failed; stopping the worker", runner.name)
            self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    def healthy(self) -> Checks:
        """A check per job type: its poll loop beats and nothing stopped it."""
        if not self.runners:
            return {"worker": check(False, error="starting")}
        return {f"loop.{r.name}": r.healthy() for r in self.runners}

    def ready(self) -> Checks:
        """Alive, every runner in its group, and the idempotency store answers."""
        checks = dict(self.healthy())
        for r in self.runners:
            checks[f"group.{r.name}"] = check(r.joined, group=r.group_id)
        store = next((r.store for r in self.runners if r.store is not None), None)
        if store is not None:
            try:
                store.ping()
                checks["idempotency_store"] = check(True)
            except StoreError as exc:
                checks["idempotency_store"] = check(False, error=str(exc))
        return checks
