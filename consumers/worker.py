"""The job worker: one consumer group per job type, a bounded number of jobs in flight, jobs
of one key in order, offsets committed only after the side effect (or the hand-off to the
retry or dead-letter topic) is done.

Threads of one `JobRunner`:
- the poll thread owns the confluent-kafka consumer: it reads batches, holds retries that
  are not due yet, routes each job to a runner thread by key, serves producer deliveries
  and commits the contiguous prefix of finished jobs per partition;
- `concurrency` runner threads, each with a FIFO queue, check the idempotency store (one
  round trip per batch), run the handler, record the done key, or hand a failed job to the
  retry ladder / dead letters.

A `Worker` runs the runners of several job types in one process, with the health server,
and stops them on SIGTERM: in-flight jobs get `jobs_shutdown_timeout_s` to finish, then
the finished prefix is committed, the rest is handed back, and the consumers leave their
groups.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from consumers.decoding import JobDecoder
from consumers.errors import StoreError, UndecodableJob, is_retriable
from consumers.idempotency import DoneStore
from consumers.job import Job, JobHandler
from consumers.metrics import JobMetrics
from consumers.retry import (
    REASON_UNDECODABLE,
    HeaderList,
    Origin,
    RetryPolicy,
    attempts_of,
    dead_letter_headers,
    due_at_of,
    header_map,
    retry_headers,
)
from consumers.tracking import DelayQueue, Entry, OffsetTracker, TopicPartition, slot_for
from keel.errors import KafkaEdgeError
from keel.health import Check, Checks, HealthServer, check, metrics_text
from keel.kafka import TopicSpec, ensure_topics, make_admin, make_consumer, make_producer
from keel.settings import KeelSettings, get_settings

log = logging.getLogger(__name__)

STALL_SECONDS = 60.0  # a poll loop silent for this long is reported unhealthy
PAUSE_AFTER_S = 1.0  # in-flight limit reached for this long: pause the partitions
_MARK_DONE_TRIES = 3

Item = tuple[Message, Entry]


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


class JobRunner:
    """One job type's consumer group member (see the module docstring)."""

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
        self.topics = handler.topics
        self.decoder = decoder
        self.producer = producer
        self.store = store if handler.idempotent else None
        self.config = config
        self.settings = settings or get_settings()
        self.group_id = group_id or f"keel.jobs.{handler.name}"
        self.tracker = OffsetTracker()
        self.delayed = DelayQueue()
        self.assigned: set[TopicPartition] = set()
        self.joined = threading.Event()
        self.last_loop = time.monotonic()
        self.error: BaseException | None = None
        self._paused: set[TopicPartition] = set()
        self._queues: list[queue.SimpleQueue[list[Item] | None]] = [
            queue.SimpleQueue() for _ in range(config.concurrency)
        ]
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self._last_commit = time.monotonic()
        self._stopping = False
        self._full_since: float | None = None
        self._error_logged: dict[tuple[int, str], float] = {}
        self._progress = threading.Event()  # a runner finished a batch
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

    # --- poll thread -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then settle in-flight jobs, commit and leave."""
        overrides = {"on_commit": self._on_commit, **self.config.consumer_overrides}
        consumer = make_consumer(self.group_id, self.settings, **overrides)
        self._consumer = consumer
        consumer.subscribe(
            [self.topics.source, self.topics.retry],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        for index, q in enumerate(self._queues):
            thread = threading.Thread(
                target=self._runner_loop, args=(q,), name=f"job-{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "job worker %s: group %s, topics %s + %s, concurrency %s",
            self.name,
            self.group_id,
            self.topics.source,
            self.topics.retry,
            self.config.concurrency,
        )
        try:
            while not stop.is_set():
                self._step(consumer)
            self._stopping = True
            self._settle(set(self.assigned), self.config.shutdown_timeout_s, consumer)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._stopping = True
            try:
                consumer.close()
            finally:
                for q in self._queues:
                    q.put(None)
                for thread in self._threads:
                    thread.join(timeout=1.0)
            log.info("job worker %s stopped", self.name)

    def _step(self, consumer: Consumer) -> None:
        self.last_loop = time.monotonic()
        now_ms = _now_ms()
        in_flight = self.tracker.in_flight()
        active = in_flight - len(self.delayed)
        room = self.config.max_in_flight - active
        if room <= 0 and self._wait_for_room():
            return
        self._apply_backpressure(consumer, room)
        timeout = 0.1
        next_due = self.delayed.next_due()
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - now_ms) / 1000))
        messages = consumer.consume(
            num_messages=max(1, min(self.config.batch_size, room)), timeout=timeout
        )
        if messages:
            self._dispatch(messages, _now_ms())
        if self.delayed:
            due = self.delayed.pop_due(_now_ms())
            if due:
                self._route(due)
        self.producer.poll(0)
        self._m_in_flight.set(in_flight)
        self._m_delayed.set(len(self.delayed))
        if time.monotonic() - self._last_commit >= self.config.commit_interval_s:
            self._commit(consumer, asynchronous=True)

    def _wait_for_room(self) -> bool:
        """Full: wait for a runner to finish a batch instead of pausing at once. Pausing
        drops librdkafka's prefetched messages and resuming costs a fetch round trip, so
        partitions are paused only when the stall lasts (then `consume` keeps serving
        rebalances). True when this step should end here."""
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        if now - self._full_since >= PAUSE_AFTER_S:
            return False
        self._progress.wait(0.05)
        self._progress.clear()
        self.producer.poll(0)
        return True

    def _apply_backpressure(self, consumer: Consumer, room: int) -> None:
        """Pause everything while too many jobs are in flight, and the retry partitions while
        too many retries wait for their due time; resume when there is room again."""
        want: set[TopicPartition] = set()
        if room > 0:
            self._full_since = None
        if room <= 0:
            want = set(self.assigned)
        elif len(self.delayed) >= self.config.max_delayed:
            want = {tp for tp in self.assigned if tp[0] == self.topics.retry}
        if want == self._paused:
            return
        to_pause, to_resume = want - self._paused, self._paused - want
        if to_pause:
            consumer.pause([KafkaTopicPartition(t, p) for t, p in to_pause])
        if to_resume:
            consumer.resume([KafkaTopicPartition(t, p) for t, p in to_resume])
        self._paused = want

    def _dispatch(self, messages: Sequence[Message], now_ms: int) -> None:
        ready: list[Item] = []
        retry_topic = self.topics.retry
        track = self.tracker.track
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaEdgeError.from_kafka_error(err, f"job worker {self.name}")
                self._log_consumer_error(err)
                continue
            topic = msg.topic()
            tp = (topic, msg.partition())
            entry = track(tp, msg.offset())  # type: ignore[arg-type]  # set on real messages
            if topic == retry_topic:
                due = due_at_of(header_map(msg.headers()))
                if due > now_ms:
                    self.delayed.push(due, (msg, entry), group=tp)
                    continue
            ready.append((msg, entry))
        if ready:
            self._route(ready)

    def _log_consumer_error(self, err: KafkaError) -> None:
        """Transient consumer errors (a topic not created yet, a broker restarting) repeat
        every poll: log each kind once a minute."""
        now = time.monotonic()
        key = (err.code(), err.str())
        if now - self._error_logged.get(key, -1e9) >= 60:
            self._error_logged[key] = now
            log.warning("job worker %s: consumer error %s", self.name, err)

    def _route(self, items: list[Item]) -> None:
        """One list per runner thread per batch (a queue operation per batch, not per job)."""
        slots = len(self._queues)
        if slots == 1:
            self._queues[0].put(items)
            return
        per_slot: list[list[Item]] = [[] for _ in range(slots)]
        for item in items:
            msg = item[0]
            per_slot[slot_for(msg.key(), slots, msg.offset() or 0)].append(item)
        for q, batch in zip(self._queues, per_slot, strict=True):
            if batch:
                q.put(batch)

    def _commit(
        self, consumer: Consumer, *, asynchronous: bool, only: set[TopicPartition] | None = None
    ) -> None:
        self._last_commit = time.monotonic()
        offsets = {
            tp: off
            for tp, off in self.tracker.committable().items()
            if tp in self.assigned and (only is None or tp in only)
        }
        if not offsets:
            return
        commit = [KafkaTopicPartition(t, p, off) for (t, p), off in offsets.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=commit, asynchronous=True)
            else:
                consumer.commit(offsets=commit, asynchronous=False)
        except KafkaException as exc:
            log.warning("job worker %s: commit failed: %s", self.name, exc)
            return
        self.tracker.mark_committed(offsets)

    def _settle(self, tps: set[TopicPartition], timeout: float, consumer: Consumer) -> None:
        """Let the jobs of these partitions finish (up to `timeout`), commit what finished and
        hand back the rest: retries waiting for their due time are handed back at once."""
        for _msg, entry in self.delayed.drop_groups(tps):
            entry.cancelled = True
        deadline = time.monotonic() + timeout
        while not self.tracker.settled(tps) and time.monotonic() < deadline:
            self.producer.poll(0.02)  # retry/DLQ deliveries finish their jobs
        if not self.tracker.settled(tps):
            log.warning(
                "job worker %s: handing back unfinished jobs after %.1fs", self.name, timeout
            )
        self._commit(consumer, asynchronous=False, only=tps)
        self.tracker.forget(tps)

    def _on_commit(self, err: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        """An asynchronous commit that failed is tried again at the next interval."""
        if err is None:
            failed = {(p.topic, p.partition) for p in partitions if p.error is not None}
        else:
            failed = {(p.topic, p.partition) for p in partitions}
            log.warning("job worker %s: commit failed: %s", self.name, err)
        if failed:
            self.tracker.unmark_committed(failed)

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self.tracker.forget(tps)
        self.assigned |= tps
        self._paused -= tps
        self.joined.set()
        log.info("job worker %s: assigned %s", self.name, sorted(tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        if tps:
            timeout = (
                self.config.shutdown_timeout_s
                if self._stopping
                else min(10.0, self.config.shutdown_timeout_s)
            )
            self._settle(tps, timeout, consumer)
        self.assigned -= tps
        self._paused -= tps
        log.info("job worker %s: revoked %s", self.name, sorted(tps))

    def _on_lost(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        for _msg, entry in self.delayed.drop_groups(tps):
            entry.cancelled = True
        self.tracker.forget(tps)
        self.assigned -= tps
        self._paused -= tps
        log.warning("job worker %s: lost %s", self.name, sorted(tps))

    # --- runner threads ----------------------------------------------------------------

    def _runner_loop(self, q: queue.SimpleQueue[list[Item] | None]) -> None:
        while True:
            items = q.get()
            if items is None:
                return
            try:
                self._process(items)
                self._progress.set()
            except Exception:  # a bug here must not stall a partition silently
                log.exception("job worker %s: unexpected error; jobs handed back", self.name)
                for _msg, entry in items:
                    if not entry.done:
                        entry.cancelled = True

    def _process(self, items: list[Item]) -> None:
        name = self.name
        wanted = self.handler.record_name
        decode = self.decoder.decode
        jobs: list[tuple[Entry, Job, Message]] = []
        for msg, entry in items:
            if entry.cancelled:
                continue
            value = msg.value() or b""
            raw_headers = msg.headers()
            headers = header_map(raw_headers) if raw_headers else {}
            topic = msg.topic() or ""
            try:
                if wanted is not None and self.decoder.record_name(value) != wanted:
                    entry.done = True  # another type on a shared topic: not ours
                    self._m_skipped.inc()
                    continue
                record = decode(value)
            except UndecodableJob as exc:
                if wanted is not None and topic == self.topics.source:
                    # Poison on a shared topic belongs to its owner's dead letters.
                    entry.done = True
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
                    exc=exc,
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
        if not jobs:
            return
        done: set[str] = set()
        store = self.store
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
                    entry.done = True
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
            entry.done = True
            finished += 1
            created = job.created_at
            if created is not None:
                latencies.append(max(0.0, time.time() - created.timestamp()))
        if finished:
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
            self._hand_off(self.topics.retry, msg, headers, entry, self._m_retried.inc)
        else:
            self._dead_letter(
                msg,
                entry,
                attempt=job.attempt,
                reason=decision.reason,
                origin=job.origin,
                exc=exc,
            )

    def _dead_letter(
        self,
        msg: Message,
        entry: Entry,
        *,
        attempt: int,
        reason: str,
        origin: Origin,
        exc: BaseException,
    ) -> None:
        log.error(
            "job %s at %s/%s/%s dead-lettered (%s after %s attempts): %s",
            self.name,
            origin.topic,
            origin.partition,
            origin.offset,
            reason,
            attempt,
            exc,
        )
        headers = dead_letter_headers(self.name, attempt, reason, origin, exc, now_ms=_now_ms())
        counter = self._metrics.dead_lettered.labels(self.name, reason)
        self._hand_off(self.topics.dlq, msg, headers, entry, counter.inc)

    def _hand_off(
        self,
        topic: str,
        msg: Message,
        headers: HeaderList,
        entry: Entry,
        on_done: Callable[[], None],
    ) -> None:
        """Produce the job's original bytes to the retry or dead-letter topic; the job is
        finished (committable) only once the broker acknowledged it."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                entry.done = True
                on_done()
            elif not entry.cancelled:
                log.error(
                    "job %s: producing to %s failed (%s); trying again", self.name, topic, err
                )
                self._hand_off(topic, msg, headers, entry, on_done)

        while True:
            try:
                self.producer.produce(
                    topic, value=msg.value(), key=msg.key(), headers=headers, on_delivery=delivered
                )
                return
            except BufferError:
                time.sleep(0.01)

    # --- status ------------------------------------------------------------------------

    def healthy(self) -> Check:
        if self.error is not None:
            return check(False, error=str(self.error))
        silent = time.monotonic() - self.last_loop
        return check(silent <= STALL_SECONDS, last_beat_s=round(silent, 1))


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
        from consumers.decoding import avro_decoder
        from consumers.idempotency import open_store

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
            checks[f"group.{r.name}"] = check(r.joined.is_set(), group=r.group_id)
        store = next((r.store for r in self.runners if r.store is not None), None)
        if store is not None:
            try:
                store.ping()
                checks["idempotency_store"] = check(True)
            except StoreError as exc:
                checks["idempotency_store"] = check(False, error=str(exc))
        return checks
