"""The Faust app: topics, RocksDB tables, batch agents, the query API and readiness.

Responsibilities:
- build one `faust.App` per worker (consumer group = KEEL_STREAMS_APP_ID) with tables in
  RocksDB through rocksdict (`rocksdb://`) backed by compacted changelog topics, and
  standby replicas (KEEL_STREAMS_STANDBY_REPLICAS);
- name every topic it uses (`internal_topics`) so the worker creates them up front;
- run the `Engine` over each fetched run of an assigned partition, handed over whole by
  Faust's consumer (`keel.streams.faust_adapter.BatchConsumer`; batches taken with
  `stream.take_events` in Faust's test context), one partition at a time, only what
  `keel.streams.offsets` says may be applied (with the runs Faust's fetcher skipped read from
  the log), and carry out its results in the order that makes replays harmless: outputs
  (dead letters, job events, re-keyed deltas) acknowledged first, then table writes, then
  sinks; Faust commits the applied offsets afterwards (it flushes the producer first);
- answer `GET /v1/views/{view}/{key}` locally when this worker owns the key's partition,
  or forward it to the owner; `/healthz`, `/readyz` (503 while rebalancing or recovering
  state from changelogs) and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import logging
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import Message
from faust.exceptions import ConsumerNotStarted
from faust.types import TP, EventT
from faust.utils import json as faust_json
from faust.web import Request, Response, View
from mode.utils.compat import want_bytes
from prometheus_client import generate_latest
from rocksdict import WriteBatch

from keel import health
from keel.apikeys import KeyRefused, KeyStore, keys_file
from keel.deadletters import H_PROCESSOR, Failure, Origin, letter_headers
from keel.kafka import TopicSpec, faust_credentials
from keel.settings import KeelSettings
from keel.streams.codec import AvroCodec
from keel.streams.dedup_index import DedupIndex, batch_record_key
from keel.streams.engine import (
    DEDUP_TABLE,
    BatchResult,
    Engine,
    Poison,
    Raw,
    has_user_state,
    unwrap_aggregate,
    unwrap_user_state,
    user_table,
)
from keel.streams.errors import BadQuery
from keel.streams.faust_adapter import (
    BatchConsumer,
    KeelFaustApp,
    owner_url,
    partition_context,
    positions,
    run_context_event,
    table_db,
)
from keel.streams.local_state import claim, mark_clean
from keel.streams.log_reader import LogReader
from keel.streams.metrics import StreamMetrics
from keel.streams.offsets import AppliedOffsets
from keel.streams.processor import KeyedView, Processor, Sink, Stateful
from keel.streams.producer import BatchProducer
from keel.streams.scheduling import PartitionRuns
from keel.streams.watchdog import Stall, StallDetector

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Keel-Routed"
# Prometheus text format; aiohttp wants the charset apart from the content type.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def key_partition(key: str, partitions: int) -> int:
    """The partition of a string key: murmur2 like Kafka's Java clients, aiokafka and Keel's
    producers (librdkafka `murmur2_random`), so the owner of a key can be computed."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


_MISSING = object()
_R = TypeVar("_R")  # a record as one stage takes it: a source `Raw`, a re-keyed delta


class TableReader:
    """The engine's `StateReader`: Faust tables (inside a partition context), and the local
    dedup index for `dedup` lookups.

    It keeps the values this worker last wrote per (table, partition) in memory, so a key
    seen in consecutive batches costs no RocksDB read and no JSON decoding (profiled: most
    keys are). They are this worker's own writes, so they stay true while it owns the
    partition: `clear` drops them at every rebalance and after a failed batch, `forget` a
    key whose processor raised (the engine updates values in place before they are
    written, and a processor that raises may have changed one halfway)."""

    def __init__(self, tables: Mapping[str, Any], index: DedupIndex, max_keys: int) -> None:
        self.tables = tables
        self.index = index
        self.partition = 0
        self.max_keys = max_keys
        self.cache: dict[tuple[str, int], dict[str, Any]] = {}

    def get(self, table: str, key: str) -> Any:
        if table == DEDUP_TABLE:
            return self.index.get(self.partition, key)
        known = self.cache.get((table, self.partition))
        if known is not None:
            value = known.get(key, _MISSING)
            if value is not _MISSING:
                return value
        # Straight to the RocksDB of this partition in Faust's store: Table.get costs a
        # __contains__ plus a __getitem__ (two lookups, two decodes) per key.
        raw = table_db(self.tables[table], self.partition).get(encode_key(key))
        return None if raw is None else json_loads(raw)

    def get_many(self, table: str, keys: Sequence[str]) -> list[Any]:
        if table == DEDUP_TABLE:
            return self.index.get_many(self.partition, keys)
        return [self.get(table, key) for key in keys]

    def remember(self, table: str, partition: int, key: str, value: Any) -> None:
        known = self.cache.get((table, partition))
        if known is None or len(known) >= self.max_keys:
            known = self.cache[(table, partition)] = {}
        known[key] = value

    def forget(self, partition: int, key: str) -> None:
        for (_table, p), known in self.cache.items():
            if p == partition:
                known.pop(key, None)

    def clear(self) -> None:
        self.cache.clear()


class StreamsApp:
    """One stream worker's Faust app. Construct, then `app.main()` / a faust Worker runs it."""

    def __init__(
        self,
        settings: KeelSettings,
        processors: Sequence[Processor],
        codec: AvroCodec,
        *,
        partitions: int,
        datadir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.view_keys = (
            KeyStore(keys_file(settings), scope="views") if settings.views_require_key else None
        )
        self.partitions = partitions
        self.codec = codec
        self.processors = list(processors)
        for proc in self.processors:
            proc.configure(settings)
        self.sinks = [p for p in self.processors if isinstance(p, Sink) and p.enabled(settings)]
        self.engine = Engine(
            self.processors,
            codec.decode,
            settings.streams_dedup_window_s * 1000,
            render_views={v for sink in self.sinks for v in sink.views},
        )
        self.views: dict[str, Processor] = {p.name: p for p in self.processors if p.queryable}
        self.metrics = StreamMetrics()
        # messages handled per agent ("source" or a keyed view's name), for tests
        self.handled: dict[str, int] = defaultdict(int)
        self.batch_size = settings.streams_batch_size
        self.within = settings.streams_batch_within_s
        self._started = False
        host, port = advertised_host(settings), settings.streams_web_port
        self.datadir = datadir or (
            (settings.streams_data_dir or settings.home / "streams")
            / settings.streams_app_id
            / f"{host}-{port}"
        )
        claim(self.datadir)  # before anything opens it: state survives only a clean stop
        conf = faust_settings(settings, partitions, self.datadir)
        # A fetch's runs are handled in one go: bound them as a batch is bounded, so the
        # loop (commits, the query API) is not held longer than one batch's work.
        conf["broker_max_poll_records"] = self.batch_size
        self.app = KeelFaustApp(settings.streams_app_id, **conf)
        # Table writes queue their changelog records in Faust's producer buffer; at its default
        # of 100 the consumer stalls after every batch ("producer buffer full"), profiled as
        # the main cost. A batch writes each key once, so the buffer is bounded by the keys
        # of one batch anyway.
        self.app.producer.buffer.max_messages = max(100_000, self.batch_size * 10)
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
        raw_codec: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = self.app.topic(settings.streams_source_topic, **raw, **raw_codec)
        self.tables: dict[str, Any] = {}
        window_ms = settings.streams_dedup_window_s * 1000
        self.tables[DEDUP_TABLE] = self.app.Table(
            DEDUP_TABLE,
            partitions=partitions,
            key_type=str,
            # Entries older than the window are useless: let Kafka delete them too.
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(window_ms * 2),
            },
        )
        for proc in self.processors:
            if isinstance(proc, Stateful) and has_user_state(proc):
                name = user_table(proc)
                self.tables[name] = self.app.Table(name, partitions=partitions, key_type=str)
        self.rekey_topics: dict[str, Any] = {}
        for proc in self.processors:
            if isinstance(proc, KeyedView):
                self.tables[proc.name] = self.app.Table(
                    proc.name, partitions=partitions, key_type=str
                )
                self.rekey_topics[proc.name] = self.app.topic(
                    self.rekey_topic_name(proc.name),
                    partitions=partitions,
                    key_type=bytes,
                    value_type=bytes,
                    key_serializer="raw",
                    value_serializer="json",
                    internal=True,
                )
        self._changelogs = {name: self.changelog_topic_name(name) for name in self.tables}
        self.index = DedupIndex(self.datadir / "dedup-index", settings.streams_dedup_window_s * 2)
        self._writer = uuid.uuid4().hex[:8]  # names this process's dedup batch records
        self._records = itertools.count()
        self._indexing = False
        self.tables[DEDUP_TABLE].on_recover(self._index_dedup_batches)
        self.reader = TableReader(self.tables, self.index, max_keys=100_000)
        self._generation = -1  # Faust's rebalance count the reader's memory belongs to
        self.watchdog = StallDetector(settings.streams_stall_timeout_s)
        self.stalls: list[Stall] = []
        self.kafka = BatchProducer(settings)
        # What this worker applied of each partition since the last rebalance: no ack counts
        # toward a commit, and nothing is applied, past a record it did not apply.
        self.applied = AppliedOffsets()
        self.log_reader = LogReader(settings, settings.streams_app_id)  # reads runs Faust lost
        self.broker_view = LogReader(settings, settings.streams_app_id)  # the watchdog's own
        self._acks_guarded = False
        self._chain_flush()
        self._close_on_stop()
        self._wire()

    def _chain_flush(self) -> None:
        """Faust flushes its producer before it commits offsets (and before it gives up
        partitions in a rebalance); make that flush wait for this worker's changelog
        records too. State writes then cost no round trip per batch, and offsets still
        never pass state that is not on the broker."""
        producer = self.app.producer
        faust_flush = producer.flush

        async def flush_both() -> None:
            await faust_flush()
            await self.kafka.flush()
            self._persist_changelog_offsets()

        producer.flush = flush_both  # type: ignore[method-assign]

    def _close_on_stop(self) -> None:
        """Close this worker's changelog producer when Faust's producer stops: after the
        consumer's last commit (and its flush). Before, librdkafka's threads outlived the
        worker, retrying brokers that were gone, and kept the process alive for minutes."""
        producer = cast(Any, self.app.producer)
        faust_on_stop = producer.on_stop

        async def on_stop() -> None:
            try:
                await faust_on_stop()
            finally:
                # Within the worker's own deadline (keel.streams.shutdown), which ends it anyway.
                dropped = self.kafka.close(self.settings.streams_shutdown_timeout_s / 2)
                self.log_reader.close()
                self.broker_view.close()
                if dropped:
                    log.error("stopped with %d state record(s) not written", dropped)
                else:
                    mark_clean(self.datadir)

        producer.on_stop = on_stop

    def _guard_acks(self) -> None:
        """Faust acks records the agent never applied (see keel.streams.offsets) and commits the
        acked offsets; an ack of the source or a re-keyed topic now counts toward a commit
        only for a record this worker applied, whichever path delivered it (Faust's streams
        or whole runs, see keel.streams.faust_adapter). The others are released (a rebalance
        waits for every record handed out to be acked) but never committed. The runs its
        fetcher skips count as done only once this worker read and applied them
        (`_applied`)."""
        if self._acks_guarded:
            return
        consumer = cast(BatchConsumer, self.app.consumer)
        topics = {self.source.get_topic_name(), *self.rekey_topic_names()}
        consumer.guard(topics, self.applied.is_applied)

        async def restart_from_committed(sender: Any, **kwargs: Any) -> None:
            # Every partition is sought back to its committed offset next.
            self.applied.clear()

        cast(Any, self.app.on_rebalance_complete).connect(restart_from_committed)

        self._acks_guarded = True

    # -- topics ----------------------------------------------------------------------
    def rekey_topic_name(self, view: str) -> str:
        return f"{self.settings.streams_app_id}-{view}-rekey"

    def changelog_topic_name(self, table: str) -> str:
        return f"{self.settings.streams_app_id}-{table}-changelog"

    def internal_topics(self) -> list[TopicSpec]:
        """Every topic this app writes to, for creation up front (auto-create is off), Faust's
        own leader topic too: Keel creates them all, so their replication is Keel's choice
        (keel.kafka.ensure_topics), never Faust's fallback of 1."""
        n = self.partitions
        specs = [
            TopicSpec(self.changelog_topic_name(name), n, config=_changelog_config(table))
            for name, table in self.tables.items()
        ]
        specs += [TopicSpec(t.get_topic_name(), n) for t in self.rekey_topics.values()]
        specs.append(TopicSpec(self.settings.streams_dlq_topic, n))
        specs.append(TopicSpec(f"{self.settings.streams_app_id}-__assignor-__leader", 1))
        return specs

    # -- agents ----------------------------------------------------------------------
    def _wire(self) -> None:
        app = self.app
        self.fold_agents: dict[str, Any] = {}

        @app.agent(self.source, name="keel-source")
        async def source_agent(stream: faust.StreamT) -> None:
            async for events in cast(faust.Stream, stream).take_events(
                self.batch_size, within=self.within
            ):
                await self.handle_source(events)

        # The agents, for Faust's test context (`agent.test_context()`, see keel.streams.testing)
        self.source_agent = source_agent
        # A worker's consumer hands these topics' fetched runs straight to the engine; the
        # agents then see nothing of them (see keel.streams.faust_adapter): their per-event path
        # runs only in Faust's test context, which has no consumer.
        handlers = self.app.run_handlers
        handlers[self.source.get_topic_name()] = self._source_run
        for name, topic in self.rekey_topics.items():
            handlers[topic.get_topic_name()] = functools.partial(self._fold_run, name)

        for name, topic in self.rekey_topics.items():
            self._fold_agent(name, topic)

        @app.task
        async def start_sinks() -> None:
            self._guard_acks()  # before the first assignment hands out any record
            for sink in self.sinks:
                await sink.start(self.settings)
            self._started = True

        if self.watchdog.enabled:
            # A timer, not the hot path: the watchdog costs nothing per event. At least 2 s:
            # asking for end offsets goes through Faust's consumer thread, which can take
            # a second while it waits on a fetch.
            interval = max(2.0, self.watchdog.timeout / 5)
            app.timer(interval, name="keel-stall-watchdog")(self.check_stalls)

        self._pages()

    def _fold_agent(self, name: str, topic: Any) -> None:
        @self.app.agent(topic, name=f"keel-fold-{name}")
        async def fold_agent(stream: faust.StreamT) -> None:
            async for events in cast(faust.Stream, stream).take_events(
                self.batch_size, within=self.within
            ):
                await self.handle_fold(name, events)

        self.fold_agents[name] = fold_agent

    async def _source_run(self, tp: TP, records: Sequence[Any]) -> None:
        """One fetched run of a source partition (aiokafka records), from the consumer."""
        last = run_context_event(self.app, tp, records[-1])
        await self.handle_source_runs([(last, raws_of_records(records))])

    async def _fold_run(self, name: str, tp: TP, records: Sequence[Any]) -> None:
        """One fetched run of a re-keyed topic's partition, from the consumer."""
        last = run_context_event(self.app, tp, records[-1])
        await self.handle_fold_runs(name, [(last, deltas_of_records(records))])

    async def handle_source(self, events: Sequence[EventT]) -> None:
        """One batch of the source agent's stream (Faust's per-event path)."""
        await self.handle_source_runs(
            [(group[-1], raws_of_events(group)) for group in _by_partition(events)]
        )

    async def handle_source_runs(self, runs: Sequence[tuple[EventT, list[Raw]]]) -> None:
        """Runs of the source topic as delivered, each one partition's (an event of it, its
        records): what may be applied of each (`_plan`) through the engine, then outputs
        acknowledged, then state written and acknowledged, then sinks."""
        started = time.perf_counter()
        self._check_generation()
        done: list[tuple[EventT, BatchResult]] = []
        try:
            await self._source_batch(runs, done, started)
            self.handled["source"] += sum(len(raws) for _last, raws in runs)
        except BaseException:
            self.reader.clear()  # values may have been updated in place and not written
            raise
        self.metrics.batch_seconds.labels("source").observe(time.perf_counter() - started)

    def _check_generation(self) -> None:
        """Forget the reader's remembered values after a rebalance (partitions may have
        moved, and come back restored from their changelogs)."""
        self._guard_acks()
        generation = self.app.rebalancing_count
        if generation != self._generation or self.app.rebalancing:
            self.reader.clear()
            self._generation = generation

    async def _source_batch(
        self,
        runs: Sequence[tuple[EventT, list[Raw]]],
        done: list[tuple[EventT, BatchResult]],
        started: float,
    ) -> None:
        applying: list[tuple[TP, int]] = []
        read: list[tuple[TP, int, int]] = []
        for last, delivered in runs:
            tp = last.message.tp
            raws = await self._plan(tp, delivered, applying, read, offset_of=_offset, from_log=_raw)
            if raws is None:
                continue
            self.reader.partition = last.message.partition
            with partition_context(last):
                done.append((last, self.engine.process(raws, self.reader)))
            self.metrics.events.labels(last.message.topic).inc(len(raws))
        self.metrics.stage_seconds.labels("engine").inc(time.perf_counter() - started)
        await self._commit(done)
        await self._applied(applying, read)

    async def _plan(
        self,
        tp: TP,
        delivered: list[_R],
        applying: list[tuple[TP, int]],
        read: list[tuple[TP, int, int]],
        *,
        offset_of: Callable[[_R], int],
        from_log: Callable[[Message], _R],
    ) -> list[_R] | None:
        """What this worker may apply of one partition's records as delivered (in offset
        order; see keel.streams.offsets), whichever path delivered them: None when nothing (all
        applied already, or the partition is not this worker's any more: handed out before
        a rebalance), else the records kept with the runs before or among them that Faust's
        fetcher skipped, read from the log (`from_log`), in offset order. Fills `applying`
        (partition, last offset) and `read` (partition, start, end)."""
        consumer = self.app.consumer
        owned = self._owned(consumer)
        if owned is not None and tp not in owned:
            return None
        start = self.applied.next(tp)
        if start is None:
            start = positions(consumer, tp)[0]  # the committed offset
        if start is None:  # nothing committed known here: ask the group's coordinator
            start = await asyncio.to_thread(self.log_reader.start, tp.topic, tp.partition)
        plan = self.applied.plan(tp, [offset_of(item) for item in delivered], start)
        if not plan.keep:
            return None
        kept = delivered if len(plan.keep) == len(delivered) else [delivered[i] for i in plan.keep]
        filled: list[Message] = []
        for run_start, run_end in plan.missing:
            log.warning(
                "partition %s: records %d..%d were not delivered; reading them from the log",
                tp,
                run_start,
                run_end - 1,
            )
            filled += await asyncio.to_thread(
                self.log_reader.read, tp.topic, tp.partition, run_start, run_end
            )
            read.append((tp, run_start, run_end))
            self.metrics.runs_read.inc()
        applying.append((tp, plan.last))
        if filled:
            kept = kept + [from_log(record) for record in filled]
            kept.sort(key=offset_of)
        return kept

    @staticmethod
    def _owned(consumer: Any) -> Any:
        """The partitions assigned to this worker (None in Faust's test context, which runs
        agents without a consumer, see keel.streams.testing)."""
        try:
            return consumer.assignment()
        except ConsumerNotStarted:
            return None

    async def _applied(
        self, applying: Sequence[tuple[TP, int]], read: Sequence[tuple[TP, int, int]]
    ) -> None:
        """The batch's state writes are queued (Faust flushes them before it commits): its
        records count as applied, and the runs read from the log count as done for Faust's
        commit (as its own skipped offsets do)."""
        for tp, last in applying:
            self.applied.applied(tp, last)
        consumer = cast(BatchConsumer, self.app.consumer)
        for tp, run_start, run_end in read:
            await consumer.mark_done(tp, run_start, run_end - 1)

    async def handle_fold(self, name: str, events: Sequence[EventT]) -> None:
        """One batch of a fold agent's stream (Faust's per-event path)."""
        runs = [
            (group[-1], [(e.message.offset, e.key, e.value) for e in group])
            for group in _by_partition(events)
        ]
        await self.handle_fold_runs(name, runs)

    async def handle_fold_runs(
        self, name: str, runs: Sequence[tuple[EventT, list[tuple[int, Any, Any]]]]
    ) -> None:
        """Runs of a re-keyed topic as delivered, each one partition's (an event of it, its
        records as (offset, key, delta)): what may be applied of each (`_plan`) folded."""
        started = time.perf_counter()
        self._check_generation()
        done: list[tuple[EventT, BatchResult]] = []
        applying: list[tuple[TP, int]] = []
        read: list[tuple[TP, int, int]] = []
        try:
            for last, delivered in runs:
                tp = last.message.tp
                from_log = functools.partial(_delta, tp)
                deltas = await self._plan(
                    tp, delivered, applying, read, offset_of=_first, from_log=from_log
                )
                if deltas is None:
                    continue
                # Deltas that are not a JSON object are skipped (never written by Keel).
                messages = [(_text(k), v) for _o, k, v in deltas if isinstance(v, Mapping)]
                self.reader.partition = last.message.partition
                with partition_context(last):
                    done.append((last, self.engine.fold(name, messages, self.reader)))
            await self._commit(done)
            await self._applied(applying, read)
            self.handled[name] += sum(len(deltas) for _last, deltas in runs)
        except BaseException:
            self.reader.clear()
            raise
        self.metrics.batch_seconds.labels(name).observe(time.perf_counter() - started)

    async def _commit(self, done: Sequence[tuple[EventT, BatchResult]]) -> None:
        # 1. outputs (dead letters, job events, re-keyed deltas), acknowledged by the broker
        stage = self.metrics.stage_seconds
        clock = time.perf_counter()
        outputs = 0
        for _last, result in done:
            outputs += self._produce_outputs(result)
        if outputs:
            await self.kafka.flush()
        clock = _tick(stage, "outputs", clock)  # includes waiting for the broker's acks
        # 2. state: RocksDB and the changelog, acknowledged before Faust commits offsets
        #    (see _chain_flush)
        for last, result in done:
            with partition_context(last):
                self._write(result, last.message.partition)
            for poison in result.poison:
                if poison.key:  # a processor raised, maybe halfway through changing the state
                    self.reader.forget(last.message.partition, poison.key)
        clock = _tick(stage, "state", clock)
        # 3. side effects that are idempotent (cache)
        for _last, result in done:
            self.metrics.duplicates.inc(result.duplicates)
            await self._run_sinks(result)
        _tick(stage, "sinks", clock)

    def _produce_outputs(self, result: BatchResult) -> int:
        count = 0
        for poison in result.poison:
            self._dead_letter(poison)
            count += 1
        prefix = self.settings.streams_jobs_topic_prefix
        for job in result.jobs:
            topic = self.codec.job_topic(job.job_type, prefix)
            try:
                payload = self.codec.encode_job(job.job_type, job.record, topic)
            except Exception as exc:
                log.error("cannot encode %s from %s: %s", job.job_type, job.processor, exc)
                self.metrics.poison.labels("job_encoding").inc()
                continue
            self.kafka.produce(topic, payload, key=job.key.encode())
            self.metrics.jobs.labels(job.job_type).inc()
            count += 1
        for name, deltas in result.deltas.items():
            topic = self.rekey_topic_name(name)
            partitions = self.partitions
            for key, message in deltas:
                raw_key = key.encode()
                self.kafka.produce(
                    topic,
                    json_dumps(message),
                    key=raw_key,
                    partition=key_partition(key, partitions),
                )
                count += 1
        return count

    def _dead_letter(self, poison: Poison) -> None:
        raw = poison.raw
        origin = Origin(
            raw.topic or self.source.get_topic_name(), raw.partition, raw.offset, raw.timestamp_ms
        )
        extra = [(H_PROCESSOR, poison.processor)] if poison.processor else []
        failure = Failure(poison.error, poison.error_class)
        headers = [
            (name, value.encode() if isinstance(value, str) else value or b"")
            for name, value in letter_headers(poison.reason, failure, origin, extra)
        ]
        log.warning(
            "dead letter %s:%s@%s: %s",
            raw.topic,
            raw.partition,
            raw.offset,
            poison.error,
            extra={"reason": poison.reason},
        )
        self.metrics.poison.labels(poison.reason).inc()
        self.kafka.produce(self.settings.streams_dlq_topic, raw.value, key=raw.key, headers=headers)

    def _write(self, result: BatchResult, partition: int) -> None:
        """Each key once: into the table's RocksDB (Faust's store, this partition, one
        WriteBatch per table) and as one changelog record to the same partition of the
        table's changelog topic."""
        seen: dict[str, Any] = {}
        batches: dict[str, WriteBatch] = {}
        produce = self.kafka.produce
        remember = self.reader.remember
        for (table, key), value in result.writes.items():
            if table == DEDUP_TABLE:
                seen[key] = value
                continue
            raw_key, raw_value = encode_key(key), json_dumps(value)
            batch = batches.get(table)
            if batch is None:
                batch = batches[table] = WriteBatch(raw_mode=True)
            batch.put(raw_key, raw_value)
            produce(self._changelogs[table], raw_value, key=raw_key, partition=partition)
            remember(table, partition, key, value)
        if seen:
            # One record for the whole batch, and the local index (see dedup_index).
            first_offset = min(entry[0] for entry in seen.values())
            record = {"e": [[event_id, entry[0], entry[1]] for event_id, entry in seen.items()]}
            key = batch_record_key(partition, first_offset, f"{self._writer}.{next(self._records)}")
            raw_key, raw_value = encode_key(key), json_dumps(record)
            batches.setdefault(DEDUP_TABLE, WriteBatch(raw_mode=True)).put(raw_key, raw_value)
            produce(self._changelogs[DEDUP_TABLE], raw_value, key=raw_key, partition=partition)
            self.index.put_many(partition, seen)
        for table, batch in batches.items():
            table_db(self.tables[table], partition).write(batch)

    def _persist_changelog_offsets(self) -> None:
        """Tell Faust's RocksDB stores how far their changelogs were written, as Faust does
        for its own writes, so a restart recovers only what is newer."""
        offsets = self.kafka.offsets
        if not offsets:
            return
        for name, table in self.tables.items():
            topic = self.changelog_topic_name(name)
            for (t, p), offset in list(offsets.items()):
                if t == topic:
                    with contextlib.suppress(Exception):
                        table.data.set_persisted_offset(TP(t, p), offset)
        offsets.clear()

    async def _index_dedup_batches(self) -> None:
        """After a rebalance: index the batch records restored or kept as a standby."""
        self._indexing = True
        try:
            table = self.tables[DEDUP_TABLE]
            added = self.index.index_batches(list(table.keys()), table.get)
            if added:
                log.info("indexed %d dedup batch records", added)
        finally:
            self._indexing = False

    async def _run_sinks(self, result: BatchResult) -> None:
        for sink in self.sinks:
            try:
                for view in sink.views:
                    changes = result.changes.get(view)
                    if changes:
                        await sink.on_changes(view, changes)
                wanted = [ev for ev in result.events if sink.wants(ev.type)]
                if wanted and sink.types:
                    await sink.on_events(wanted)
            except Exception as exc:
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error("sink %s failed: %s", sink.name, exc)

    # -- stalled partitions --------------------------------------------------------------
    async def check_stalls(self) -> None:
        """One watchdog tick: snapshot every assigned partition the agents read, feed the
        detector, log each new stall once and publish them (gauge, /healthz)."""
        app = self.app
        consumer = cast(Any, app.consumer)
        topics = {self.source.get_topic_name(), *self.rekey_topic_names()}
        offsets: dict[tuple[str, int], tuple[int, int]] = {}
        quiet: list[tuple[str, int]] = []
        unknown: list[tuple[str, int]] = []
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            key = (tp.topic, tp.partition)
            # The position is what Faust last committed for the partition (the next offset
            # to process: every message before it was acked), else the offset after the last
            # message it handed to a stream; both are Faust's own bookkeeping in memory.
            # Unknown (nothing committed or read since the assignment): the group's committed
            # offset is asked of the brokers below; a partition without one is skipped, so a
            # partition whose messages all expired is not taken for a stuck one.
            committed, read = positions(consumer, tp)
            position = committed if committed is not None else None if read is None else read + 1
            if position is None:
                unknown.append(key)
                continue
            # aiokafka's highwater from the last fetch response: free, but it stops moving
            # for a partition that is no longer fetched, which is just the failure to catch.
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked since assignment() (aiokafka asserts it is assigned)
                continue
            offsets[key] = (position, highwater if highwater else 0)
            if not highwater or highwater <= position:
                quiet.append(key)
        if quiet or unknown:
            # Only partitions that look caught up (or whose position is unknown) are asked
            # about: a busy worker asks nothing. Asked by a client of Keel's own in a thread,
            # never through Faust's consumer thread: that thread is what may be stuck, and a
            # tick waiting on it would stop the watchdog with it.
            try:
                ends, committed_now = await asyncio.wait_for(
                    asyncio.to_thread(self.broker_view.standing, quiet + unknown, unknown, 10.0),
                    timeout=15.0,
                )
            except Exception as exc:
                log.debug("stall watchdog: brokers did not answer: %s", exc)
                ends, committed_now = {}, {}
            for key, end in ends.items():
                if key in offsets:
                    offsets[key] = (offsets[key][0], end)
                elif key in committed_now:
                    offsets[key] = (committed_now[key], end)
        paused = bool(app.rebalancing or app.in_recovery)
        stalls = self.watchdog.observe(time.monotonic(), offsets, paused=paused)
        for stall in self.watchdog.newly_reported(stalls):
            log.warning(
                "partition %s[%d] stalled: at offset %d of %d for %.0f s",
                stall.topic,
                stall.partition,
                stall.position,
                stall.highwater,
                stall.seconds,
                extra={"stall": stall.as_dict()},
            )
        if self.stalls and not stalls:
            log.info("no partition stalled any more")
        self.stalls = stalls
        self.metrics.stalled.set(len(stalls))

    def rekey_topic_names(self) -> list[str]:
        return [t.get_topic_name() for t in self.rekey_topics.values()]

    # -- readiness and queries --------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        app = self.app
        if not self._started:
            return False, "starting"
        if app.rebalancing:
            return False, "rebalancing"
        if app.in_recovery or self._indexing:
            return False, "recovering tables from changelogs"
        if not cast(Any, app.tables).recovery.completed.is_set():
            return False, "waiting for the first assignment"
        return True, "ready"

    def query(self, view: str, key: str, params: Mapping[str, str]) -> tuple[int, Any]:
        """Answer a query from the local table: (status, body)."""
        proc = self.views.get(view)
        if proc is None:
            return 404, {"error": f"unknown view {view!r}", "views": sorted(self.views)}
        table = proc.name if isinstance(proc, KeyedView) else user_table(proc)  # type: ignore[arg-type]
        stored = self.tables[table].get(key)
        value = (
            unwrap_aggregate(stored) if isinstance(proc, KeyedView) else unwrap_user_state(stored)
        )
        if value is None:
            return 404, {"error": f"no {view} for key {key!r}"}
        try:
            return 200, proc.render(value, params)
        except BadQuery as exc:
            return 400, {"error": str(exc)}
        except KeyError:
            return 404, {"error": f"no {view} for key {key!r} in window {params.get('window')!r}"}

    def owner(self, view: str, key: str) -> tuple[bool, str | None]:
        """(served here, URL of the owner) for the key's partition of the view's table."""
        proc = self.views[view]
        table = proc.name if isinstance(proc, KeyedView) else user_table(proc)  # type: ignore[arg-type]
        tp = TP(self.changelog_topic_name(table), key_partition(key, self.partitions))
        assignor = self.app.assignor
        if tp in assignor.assigned_actives():
            return True, None
        return False, owner_url(assignor, tp)

    def _pages(self) -> None:
        streams = self

        class Views(View):
            async def get(self, request: Request, view: str, key: str) -> Response:
                return await streams._answer(self, request, view, key)

        class Healthz(View):
            async def get(self, request: Request) -> Response:
                # A stalled partition fails it: a restart gets the partition fetched again.
                stalled = [s.as_dict() for s in streams.stalls]
                status, body = health.answer(
                    {"partitions": health.check(not stalled, stalled=stalled)}
                )
                return self.json(body, status=status)

        class Readyz(View):
            async def get(self, request: Request) -> Response:
                ready, why = streams.readiness()
                streams.metrics.ready.set(1 if ready else 0)
                status, body = health.answer({"worker": health.check(ready, state=why)})
                return self.json(body, status=status)

        class Metrics(View):
            async def get(self, request: Request) -> Response:
                return self.bytes(
                    generate_latest(streams.metrics.registry), content_type=METRICS_CONTENT_TYPE
                )

        self.app.page("/v1/views/{view}/{key}")(Views)
        self.app.page("/healthz")(Healthz)
        self.app.page("/readyz")(Readyz)
        self.app.page("/metrics")(Metrics)

    async def _answer(self, web_view: View, request: Request, view: str, key: str) -> Response:
        params = dict(request.query)
        if self.view_keys is not None:  # KEEL_VIEWS_REQUIRE_KEY: an API key of scope views
            try:
                self.view_keys.refresh()  # one stat(): a revoked key is refused at once
                self.view_keys.authenticate(request.headers.get("Authorization"))
            except KeyRefused as exc:
                return web_view.json({"error": str(exc)}, status=exc.status)
        try:
            if view not in self.views:
                status, body = self.query(view, key, params)
                return web_view.json(body, status=status)
            local, url = self.owner(view, key)
            if local:
                if self.app.in_recovery or self.app.rebalancing:
                    return _unavailable(web_view, "rebalancing or recovering state; retry")
                status, body = self.query(view, key, params)
                return web_view.json(body, status=status)
            if request.headers.get(ROUTED_HEADER) or not url:
                return _unavailable(web_view, "the owner of this key is not known yet; retry")
            return await self._forward(web_view, request, url)
        except Exception as exc:
            log.exception("query %s/%s failed", view, key)
            return _unavailable(web_view, f"{type(exc).__name__}: {exc}")

    async def _forward(self, web_view: View, request: Request, url: str) -> Response:
        target = url.rstrip("/") + str(request.rel_url)
        headers = {ROUTED_HEADER: "1"}
        if auth := request.headers.get("Authorization"):  # the owner checks the key too
            headers["Authorization"] = auth
        async with self.app.http_client.get(target, headers=headers) as response:
            body = await response.read()
            try:
                value = json.loads(body)
            except ValueError:
                return _unavailable(web_view, f"owner {url} answered {response.status}")
            return web_view.json(value, status=response.status)


def _unavailable(web_view: View, why: str) -> Response:
    return web_view.json({"error": why}, status=503, headers={"Retry-After": "1"})


def advertised_host(settings: KeelSettings) -> str:
    """The host other workers reach this one at; `auto` is the machine's hostname (in
    docker-compose, the container's), and then the query API binds every interface."""
    host = settings.streams_web_host
    return socket.gethostname() if host in ("", "auto") else host


def tune_gc() -> None:
    """Garbage collection for a stream worker (Keel's, and the benchmark's Faust floor, so
    both run alike): move what start-up built (modules, Faust's app, the processors) out of
    the collector's way with `gc.freeze`, so the full collections that millions of
    short-lived objects trigger do not walk it again and again (measured: a fifth of a
    worker's time per event, see bench/RESULTS.md; a higher young-generation threshold on
    top changed nothing measurable)."""
    gc.collect()
    gc.freeze()


def faust_settings(settings: KeelSettings, partitions: int, datadir: Path) -> dict[str, Any]:
    """The Faust configuration of a Keel worker (also used by the benchmark's Faust floor, so
    both run with the same settings)."""
    host, port = advertised_host(settings), settings.streams_web_port
    batch = settings.streams_batch_size
    return {
        "broker": ";".join(f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")),
        "broker_credentials": faust_credentials(settings),
        "store": "rocksdb://",
        "datadir": str(datadir),
        "topic_partitions": partitions,
        # For a topic Faust would create itself (Keel creates them all first: internal_topics).
        # Faust takes no -1, so keel.streams.cli resolves the cluster's default into the settings.
        **(
            {"topic_replication_factor": settings.replication_factor}
            if settings.replication_factor is not None
            else {}
        ),
        "table_standby_replicas": settings.streams_standby_replicas,
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "broker_session_timeout": settings.streams_session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.streams_session_timeout_s / 5),
        "broker_commit_interval": 1.0,
        "broker_commit_every": max(10_000, batch * 4),
        "stream_buffer_maxsize": max(8192, batch * 4),
        "stream_recovery_delay": 0.2,
        "web_enabled": True,
        "web_host": host,
        "web_bind": "0.0.0.0" if host not in ("127.0.0.1", "localhost") else host,
        "web_port": port,
        "canonical_url": f"http://{host}:{port}",
        "web_in_thread": False,
        "autodiscover": False,
        # Each partition's fetched records in one run (see keel.streams.scheduling).
        "ConsumerScheduler": PartitionRuns,
        # Faust's own pages (graph, stats, tables) are off: Keel's are served instead.
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_tables_enabled": False,
        "web_router_enabled": True,
    }


def _tick(counter: Any, stage: str, since: float) -> float:
    now = time.perf_counter()
    counter.labels(stage).inc(now - since)
    return now


def encode_key(key: str) -> bytes:
    """A table key as Faust's json key serializer writes it: Faust uses orjson when it is
    installed, as it is with Keel (non-ASCII characters as UTF-8, not escaped)."""
    return orjson.dumps(key) if faust_json.orjson is not None else want_bytes(faust_json.dumps(key))


_encoder = json.JSONEncoder(separators=(",", ":"))


def json_dumps(value: Any) -> bytes:
    """A table value or delta as compact JSON bytes, which Faust's json codec reads."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # e.g. an integer beyond 64 bits: the standard library takes it
        return _encoder.encode(value).encode()


def json_loads(raw: bytes) -> Any:
    return orjson.loads(raw)


def raws_of_events(events: Sequence[EventT]) -> list[Raw]:
    """A stream's events of one partition as the engine's `Raw` records."""
    # Hot: positional arguments, each attribute read once. The headers are passed as the
    # consumer gave them (an empty tuple when none, no copy): measured cheaper than testing
    # for them here, and the engine reads only non-empty ones.
    raws: list[Raw] = []
    append = raws.append
    for e in events:
        m, value = e.message, e.value
        append(
            Raw(
                value if type(value) is bytes else m.value,
                m.partition,
                m.offset,
                int(m.timestamp * 1000),
                m.key,
                m.topic,
                m.headers,
            )
        )
    return raws


def raws_of_records(records: Sequence[Any]) -> list[Raw]:
    """One fetched run of aiokafka records (timestamps in ms) as the engine's `Raw`s."""
    return [
        Raw(r.value, r.partition, r.offset, r.timestamp, r.key, r.topic, r.headers) for r in records
    ]


def deltas_of_records(records: Sequence[Any]) -> list[tuple[int, Any, Any]]:
    """A fetched run of a re-keyed topic's records as (offset, key, delta), every record
    (the plan needs every offset delivered), each delta as Faust's json codec reads it."""
    return [(r.offset, r.key, delta_value(r.value, r.topic, r.offset)) for r in records]


def delta_value(raw: bytes | None, topic: Any, offset: Any) -> Any:
    """A re-keyed record's value decoded (None when absent or not JSON: skipped)."""
    if raw is None:
        return None
    try:
        return json_loads(raw)
    except (TypeError, ValueError):  # orjson refuses integers past 64 bits
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            log.warning("skipping a re-keyed record that is not JSON at %s@%s", topic, offset)
            return None


def _by_partition(events: Sequence[EventT]) -> list[list[EventT]]:
    groups: dict[int, list[EventT]] = defaultdict(list)
    for e in events:
        groups[e.message.partition].append(e)
    return list(groups.values())


def _raw(record: Message) -> Raw:
    """A record read from the log (keel.streams.log_reader), as the engine takes it."""
    _kind, timestamp = record.timestamp()
    return Raw(
        record.value(),
        cast(int, record.partition()),
        cast(int, record.offset()),
        timestamp,
        record.key(),
        cast(str, record.topic()),
        tuple(cast(Any, record.headers()) or ()),
    )


def _delta(tp: TP, record: Message) -> tuple[int, Any, Any]:
    """A re-keyed record read from the log (keel.streams.log_reader) as (offset, key, delta)."""
    offset = cast(int, record.offset())
    return offset, record.key(), delta_value(record.value(), tp, offset)


def _offset(raw: Raw) -> int:
    return raw.offset


def _first(item: tuple[int, Any, Any]) -> int:
    return item[0]


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes | bytearray) else str(key)


def _changelog_config(table: Any) -> dict[str, str]:
    config = {"cleanup.policy": "compact"}
    config.update({k: str(v) for k, v in table.extra_topic_configs.items()})
    return config


__all__ = ["StreamsApp", "faust_settings", "key_partition", "partition_context", "tune_gc"]
