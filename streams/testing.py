"""Test processors without a broker, two ways (`keel streams new` writes tests of both):

- `run(processors, events)`: the batch `Engine` alone, on plain values, with a dict for the
  tables. Fast (no Faust, no RocksDB), and it lets a test choose the batches and replay
  them (the dedup and crash-replay rules are tested this way).
- `faust_run(processors, events, datadir)`: a real worker's `StreamsApp` driven through
  Faust's own test context (`agent.test_context()`): events are encoded as Keel's
  Confluent-framed Avro, put into the source agent's stream (`AgentTestWrapper.put`), taken
  in batches by `stream.take_events`, decoded by the worker's codec and handled by its
  batch handler, with tables in RocksDB under `datadir`; re-keyed deltas go on through the
  fold agents' test contexts the same way. What the worker would send to Kafka (changelog
  records, job events, deltas, dead letters) is kept in order by a `RecordingProducer`
  instead, as Faust's test context keeps its own topics in memory, and schema ids come
  from a `LocalRegistry` (the catalog's schemas, numbered in memory).
  Views are read through the worker's query path (`StreamsApp.query`).

Both run the same engine, so a processor's views, jobs and dedup behave the same in each;
the integration tests (tests/streams/test_worker.py) then run workers on a real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from keel.streams.engine import (
    BatchResult,
    Engine,
    Job,
    Raw,
    unwrap_aggregate,
    unwrap_user_state,
    user_table,
)
from keel.streams.events import Event
from keel.streams.processor import KeyedView, Processor, Stateful


def event(
    event_type: str,
    *,
    user_id: str = "u1",
    occurred_at: int = 1_764_316_800_000_000,
    event_id: str | None = None,
    **fields: Any,
) -> Event:
    """An event as the codec would produce it (envelope + typed fields)."""
    record = {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "user_id": user_id,
        "occurred_at": occurred_at,
        "received_at": occurred_at,
        "source": "test",
        "context": None,
        **fields,
    }
    return Event.from_record(record)


class DictState:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {}

    def get(self, table: str, key: str) -> Any:
        return self.tables.get(table, {}).get(key)

    def put_all(self, writes: Mapping[tuple[str, str], Any]) -> None:
        for (table, key), value in writes.items():
            self.tables.setdefault(table, {})[key] = value


@dataclass
class Run:
    processors: dict[str, Processor]
    state: DictState
    jobs: list[Job] = field(default_factory=list)
    results: list[BatchResult] = field(default_factory=list)

    def view(self, name: str, key: str, params: Mapping[str, str] | None = None) -> Any:
        """The rendered value of a view for a key, or None."""
        proc = self.processors[name]
        if isinstance(proc, KeyedView):
            value = unwrap_aggregate(self.state.get(proc.name, key))
        elif isinstance(proc, Stateful):
            value = unwrap_user_state(self.state.get(user_table(proc), key))
        else:
            return None
        return None if value is None else proc.render(value, params or {})


def run(
    processors: Sequence[Processor],
    events: Sequence[Event],
    *,
    batch: int = 100,
    dedup_window_ms: int = 86_400_000,
    state: DictState | None = None,
) -> Run:
    """Feed events (one partition, offsets in order) through the engine in batches."""
    by_id = {ev.event_id: ev for ev in events}
    engine = Engine(processors, lambda data: dict(by_id[data.decode()].data), dedup_window_ms)
    state = state or DictState()
    out = Run({p.name: p for p in processors}, state)
    raws = [Raw(ev.event_id.encode(), 0, i, ev.occurred_at // 1000) for i, ev in enumerate(events)]
    for start in range(0, len(raws), batch):
        result = engine.process(raws[start : start + batch], state)
        state.put_all(result.writes)
        out.jobs.extend(result.jobs)
        out.results.append(result)
        for name, deltas in result.deltas.items():
            folded = engine.fold(name, deltas, state)
            state.put_all(folded.writes)
    return out


# -- Faust's test context -------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """A record the worker would have produced to Kafka."""

    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None


class RecordingProducer:
    """In Faust's test context, in place of the worker's librdkafka producer (same methods):
    keeps every record, and answers `flush` at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self.records.append(Record(topic, value, key, partition, list(headers or []) or None))

    async def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class TestContextLog:
    """The log as Faust's test context has it: every partition starts at offset 0 (see
    `FaustRun._at_next_offset`) and hands every record over, so no run is ever missing."""

    def start(self, topic: str, partition: int) -> int:
        return 0

    def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        raise AssertionError(f"{topic}[{partition}]: offsets {start}..{end - 1} not handed over")

    def close(self) -> None:
        pass


class LocalRegistry:
    """The two calls `AvroSerde` makes of a schema registry, in memory: `register` numbers
    each distinct schema, `get_schema` returns it by number."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, Any] = {}

    def register(self, subject: str, schema: Any) -> int:
        import json

        text = json.dumps(schema, sort_keys=True)
        schema_id = self._ids.get(text)
        if schema_id is None:
            schema_id = self._ids[text] = len(self._ids) + 1
            self._schemas[schema_id] = json.loads(text)
        return schema_id

    def get_schema(self, schema_id: int) -> Any:
        from keel.schemas.errors import RegistryError

        try:
            return self._schemas[schema_id]
        except KeyError:
            raise RegistryError(
                f"schema {schema_id} not found", status=404, error_code=40403
            ) from None


def local_codec() -> Any:
    """An `AvroCodec` over the catalog with a `LocalRegistry`: encodes and decodes without a
    registry server."""
    from keel.schemas.catalog import load_catalog
    from keel.schemas.serde import AvroSerde
    from keel.streams.codec import AvroCodec

    catalog = load_catalog()
    return AvroCodec(AvroSerde(cast(Any, LocalRegistry()), catalog), catalog)


@dataclass
class FaustRun:
    """A `StreamsApp` inside Faust's test context (see `faust_context`)."""

    app: Any  # keel.streams.app.StreamsApp
    source: Any  # the source agent's AgentTestWrapper
    folds: dict[str, Any]  # keyed view -> its fold agent's AgentTestWrapper
    codec: Any
    producer: RecordingProducer
    timeout_s: float = 30.0
    _offsets: dict[tuple[int, int], int] = field(default_factory=dict)

    def encode(self, ev: Event | Mapping[str, Any]) -> bytes:
        record = dict(ev.data if isinstance(ev, Event) else ev)
        return bytes(self.codec.serde.encode(str(record["type"]), record))

    async def send(
        self,
        *events: Event | Mapping[str, Any] | bytes,
        key: str = "u1",
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Put events (or raw bytes, keyed by `key`) into the source agent's stream, each to
        its user's partition and with `headers` (e.g. a replayed dead letter's), and wait
        until the worker has handled them, keyed views' deltas included."""
        from keel.streams.app import key_partition

        target = self.app.handled["source"] + len(events)
        sent = len(self.producer.records)
        for ev in events:
            if isinstance(ev, bytes):
                value, user, ts = ev, key, time.time()
            else:
                record = ev.data if isinstance(ev, Event) else ev
                value, user = self.encode(record), str(record["user_id"])
                occurred = Event.from_record(record).occurred_at
                ts = occurred / 1e6
            self._at_next_offset(self.source, key_partition(user, self.app.partitions))
            await self.source.put(
                value,
                key=user.encode(),
                partition=key_partition(user, self.app.partitions),
                timestamp=ts,
                headers=list(headers) if headers else None,
                wait=False,
            )
        await self._handled("source", target, self.source)
        await self._fold(self.producer.records[sent:])

    async def _fold(self, records: Sequence[Record]) -> None:
        import json

        for name, agent in self.folds.items():
            topic = self.app.rekey_topic_name(name)
            deltas = [r for r in records if r.topic == topic]
            if not deltas:
                continue
            target = self.app.handled[name] + len(deltas)
            for r in deltas:
                self._at_next_offset(agent, r.partition)
                await agent.put(
                    json.loads(r.value or b"null"), key=r.key, partition=r.partition, wait=False
                )
            await self._handled(name, target, agent)

    def _at_next_offset(self, agent: Any, partition: int | None) -> None:
        """Offsets per partition, as in a Kafka log: Faust's test wrapper counts one
        sequence over all partitions, which a worker takes for records gone missing."""
        key = (id(agent), partition or 0)
        agent.sent_offset = self._offsets.get(key, 0)
        self._offsets[key] = agent.sent_offset + 1

    async def _handled(self, name: str, target: int, agent: Any) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.app.handled[name] < target:
            if agent._crash_reason is not None:
                raise agent._crash_reason
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {self.app.handled[name]} of {target} handled")
            await asyncio.sleep(0.005)

    def view(self, name: str, key: str, params: Mapping[str, str] | None = None) -> Any:
        """The view's value for a key as the query API answers it, or None (404)."""
        status, body = self.app.query(name, key, dict(params or {}))
        return body if status == 200 else None

    def records(self, topic: str) -> list[Record]:
        return [r for r in self.producer.records if r.topic == topic]

    def jobs(self, job_type: str) -> list[dict[str, Any]]:
        """The job events produced on a job type's topic, decoded."""
        topic = self.codec.job_topic(job_type, self.app.settings.streams_jobs_topic_prefix)
        return [dict(self.codec.decode(r.value)) for r in self.records(topic)]

    def dead_letters(self) -> list[Record]:
        return self.records(self.app.settings.streams_dlq_topic)


@contextlib.asynccontextmanager
async def faust_context(
    processors: Sequence[Processor],
    datadir: Path,
    *,
    partitions: int = 4,
    settings: Any = None,
) -> AsyncIterator[FaustRun]:
    """A worker's app with its agents in Faust's test context (no broker, no registry).
    `settings` (a KeelSettings) defaults to a unique app id, small batches and no cache."""
    from faust import Schema

    from keel.settings import KeelSettings
    from keel.streams.app import StreamsApp

    settings = settings or KeelSettings(
        streams_app_id=f"test-{uuid.uuid4().hex[:8]}",
        streams_data_dir=datadir,
        streams_cache_enabled=False,
        streams_batch_within_s=0.01,
        streams_standby_replicas=0,
    )
    codec = local_codec()
    app = StreamsApp(settings, processors, codec, partitions=partitions, datadir=datadir)
    producer = RecordingProducer()
    app.kafka = cast(Any, producer)
    app.log_reader = cast(Any, TestContextLog())
    raw: Any = Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    async with contextlib.AsyncExitStack() as stack:
        source = await stack.enter_async_context(
            app.source_agent.test_context(channel=app.app.channel(schema=raw))
        )
        folds = {}
        for name, agent in app.fold_agents.items():
            deltas: Any = Schema(key_type=bytes, key_serializer="raw", value_serializer="raw")
            folds[name] = await stack.enter_async_context(
                agent.test_context(channel=app.app.channel(schema=deltas))
            )
        try:
            yield FaustRun(app, source, folds, codec, producer)
        finally:
            app.index.close()


def faust_run(
    processors: Sequence[Processor],
    events: Sequence[Event | Mapping[str, Any]],
    datadir: Path,
    *,
    partitions: int = 4,
) -> FaustRun:
    """Send events through a worker in Faust's test context; the returned run answers
    `view(...)`, `jobs(...)` and `dead_letters()` (its tables stay readable in `datadir`)."""

    async def go() -> FaustRun:
        async with faust_context(processors, datadir, partitions=partitions) as ctx:
            await ctx.send(*events)
            return ctx

    return asyncio.run(go())
