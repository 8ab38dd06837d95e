"""What `keel.streams.faust_adapter` takes from faust-streaming past its public API, checked
against the installed version: these fail on the day an upgrade changes any of it.

A failure here means: read the new faust-streaming's code behind the failing check, bring
`streams/faust_adapter.py` in line with it (its drain loop mirrors Faust's), run the
streams tests, then update the recorded value and `FAUST_TESTED` with pyproject's pin."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import tomllib
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.streams import current_event
from faust.transport.consumer import Consumer, Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from packaging.specifiers import SpecifierSet

from keel.settings import KeelSettings
from keel.streams.app import StreamsApp
from keel.streams.codec import AvroCodec
from keel.streams.discovery import discover
from keel.streams.faust_adapter import (
    FAUST_TESTED,
    BatchConsumer,
    KeelFaustApp,
    owner_url,
    partition_context,
    positions,
    run_context_event,
    table_db,
)
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv
from tests.streams.test_watchdog import InProcessWorker, _events

ROOT = Path(__file__).resolve().parents[2]

# sha256 (first 16 hex digits) of the source of each faust-streaming function the adapter
# mirrors or feeds: the drain loop it replaces, the offset bookkeeping its acks go into,
# what a rebalance waits on, how Faust builds a message and its transport.
MIRRORED = {
    "Consumer._drain_messages": "44a2500309e83c63",
    "Consumer.getmany": "4b168d84882a70d6",
    "Consumer.ack": "5fcf41cf45153475",
    "Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "Consumer.wait_empty": "e4662fe24f094819",
    "Consumer._clean_unacked_messages": "11be2587e71c9162",
    "Consumer._add_gap": "4df2573ded7c1c2c",
    "Consumer._wait_next_records": "6218e1969a636b3f",
    # what the read offset means after a seek (the offset to read next)
    "Consumer.seek": "b86a9fe05f956b30",
    "Consumer.perform_seek": "0e8c130ff4b0afd8",
    "Fetcher._fetcher": "68f894f0b577d810",
    "aiokafka.Consumer._to_message": "7c24f6511b2fcef7",
    "App._new_transport": "42db531312dd776f",
    "App.create_event": "15fea3d1e95e6625",
}


def _source_of(name: str) -> str:
    owners: dict[str, Any] = {
        "Consumer": Consumer,
        "Fetcher": Fetcher,
        "aiokafka.Consumer": faust_aiokafka.Consumer,
        "App": faust.App,
    }
    owner, _, attr = name.rpartition(".")
    fn = getattr(owners[owner], attr)
    return inspect.getsource(getattr(fn, "fun", fn))  # a mode ServiceTask wraps its function


@pytest.mark.unit
def test_the_installed_faust_is_in_the_tested_range_pinned_in_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("faust-streaming")]
    assert pins == [f"faust-streaming{FAUST_TESTED}"]
    assert version("faust-streaming") in SpecifierSet(FAUST_TESTED)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_the_faust_code_the_adapter_mirrors_is_the_code_it_was_written_against(name: str) -> None:
    digest = hashlib.sha256(_source_of(name).encode()).hexdigest()[:16]
    assert digest == MIRRORED[name], f"faust-streaming's {name} changed: review the adapter"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[KeelFaustApp]:
    yield KeelFaustApp(f"adapter-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:1")


@pytest.mark.unit
def test_the_app_consumer_is_the_batch_consumer_with_the_state_it_reads(app: Any) -> None:
    consumer = app.consumer
    assert type(consumer) is BatchConsumer
    for attr in ("_acked", "_acked_index", "_read_offset", "_committed_offset", "_gap"):
        assert hasattr(consumer, attr), attr
    assert positions(consumer, TP("t", 0)) == (None, None)
    assert owner_url(app.assignor, TP("t", 0)) is None
    assert isinstance(app.assignor._tps_url, dict)


@pytest.mark.unit
def test_a_run_acked_is_what_fausts_commit_takes(app: Any) -> None:
    consumer, tp = app.consumer, TP("t", 0)
    consumer._ack_run(tp, list(range(10, 20)))
    consumer._ack_run(tp, [18, 19])  # handed over again: counted once
    assert consumer._new_offset(tp) == 20
    consumer._committed_offset[tp] = 20
    consumer._ack_run(tp, [15, 20, 21])  # below the commit: ignored, as Consumer.ack does
    assert consumer._new_offset(tp) == 22
    assert consumer._n_acked == 12


@pytest.mark.unit
def test_a_guarded_topic_counts_only_applied_records_and_runs_marked_done(app: Any) -> None:
    consumer, tp, other = app.consumer, TP("t", 0), TP("other", 0)
    applied_below = {tp: 5}
    consumer.guard({"t"}, lambda p, offset: offset < applied_below.get(p, 0))

    async def deliver() -> None:
        await consumer._add_gap(tp, 5, 6)  # Faust's fetcher skipped 5..6: not done for "t"
        await consumer._add_gap(other, 0, 1)  # another topic's gaps stay Faust's
        await consumer._deliver_run(tp, [_Rec(o) for o in range(8)], handler)

    async def handler(_tp: TP, run: Any) -> None:
        pass  # applied 0..4 only (say 5.. arrived after a rebalance's seek)

    asyncio.run(deliver())
    assert consumer._new_offset(tp) == 5  # 5..7 were handed over, not applied
    consumer._committed_offset[tp] = 5  # Faust committed it
    assert not consumer._gap[tp] and consumer._gap[other]  # only the other topic's noted

    class Message:  # a stream's message of a guarded topic, not applied: released only
        topic, offset, acked, refcount = "t", 9, False, 1

    message = Message()
    message.tp = tp  # type: ignore[attr-defined]
    consumer._unacked_messages.add(message)
    assert consumer.ack(message) is False
    assert message.acked and message not in consumer._unacked_messages

    applied_below[tp] = 8  # 5..7 applied after all, 5..6 read from the log
    consumer._ack_run(tp, [7])
    assert consumer._new_offset(tp) is None  # nothing to commit past 5 and 6
    asyncio.run(consumer.mark_done(tp, 5, 6))
    assert consumer._new_offset(tp) == 8


@pytest.mark.unit
def test_a_runs_context_event_is_fausts_current_event_for_its_partition(tmp_path: Path) -> None:
    settings = KeelSettings(streams_app_id="adapter-unit", streams_data_dir=tmp_path)
    streams = StreamsApp(settings, discover(), AvroCodec(serde=None, catalog=None), partitions=3)

    class Record:
        topic, partition, offset, timestamp, timestamp_type = "src", 2, 41, 1_700_000_000_000, 0
        key, value, headers, checksum = b"u1", b"v", [], None
        serialized_key_size, serialized_value_size = 2, 1

    event = run_context_event(streams.app, TP("src", 2), Record())
    assert (event.message.partition, event.message.offset, event.key) == (2, 41, b"u1")
    assert event.message.timestamp == 1_700_000_000.0
    with partition_context(event):
        assert current_event() is event
    assert current_event() is None
    db = table_db(streams.tables["user_activity"], 2)
    db[b"k"] = b"v"
    assert db.get(b"k") == b"v"


# -- the path in a worker, against the real broker -------------------------------------------


@pytest.fixture
def worker(streams_env: StreamsEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from keel.local.ports import free_port

    for name, value in streams_env.env.items():
        if name.startswith("KEEL_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("KEEL_STREAMS_WEB_PORT", str(free_port()))
    running = InProcessWorker(KeelSettings())
    app = running.start()
    try:
        yield running, app
    finally:
        running.stop()


@pytest.mark.integration
def test_a_worker_takes_whole_runs_and_commits_them_through_faust(
    streams_env: StreamsEnv, worker: Any
) -> None:
    running, app = worker
    events = _events(users=30, per_user=20)
    streams_env.send(events)

    def handled() -> bool:
        if running.failed is not None:
            raise AssertionError(f"the worker failed: {running.failed!r}")
        return app.handled["source"] >= len(events)

    wait_for(handled, 120, "the worker to handle every event")
    assert app.handled["source"] == len(events)
    consumer = app.app.consumer
    assert type(consumer) is BatchConsumer
    # Nothing of the source went through Faust's per-message path (its sensors count it).
    assert not app.app.monitor.messages_received_by_topic.get(streams_env.source)

    def committed() -> dict[int, int] | None:
        offsets = {
            tp.partition: consumer._committed_offset.get(tp)
            for tp in consumer.assignment()
            if tp.topic == streams_env.source
        }
        ends = {tp.partition: consumer.highwater(tp) for tp in consumer.assignment()
                if tp.topic == streams_env.source}  # fmt: skip
        return offsets if offsets and offsets == ends else None

    wait_for(committed, 30, "Faust to commit every run's offsets")


class _Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


@pytest.mark.unit
def test_the_record_at_the_offset_sought_is_handed_over_and_those_below_are_not(app: Any) -> None:
    consumer, tp = app.consumer, TP("t", 0)
    handled: list[int] = []

    async def handler(_tp: TP, run: Any) -> None:
        handled.extend(r.offset for r in run)

    async def deliver() -> None:
        # What Faust's seek to the committed offset (3) leaves, Consumer.seek and
        # perform_seek alike: the offset to read next.
        consumer._read_offset[tp] = 3
        await consumer._deliver_run(tp, [_Rec(o) for o in range(1, 6)], handler)

    asyncio.run(deliver())
    assert handled == [3, 4, 5]
    assert consumer._read_offset[tp] == 5


@pytest.mark.unit
def test_a_run_handled_across_a_rebalance_is_neither_acked_nor_noted_read(app: Any) -> None:
    consumer, tp = app.consumer, TP("t", 0)
    handled: list[int] = []

    async def handler(_tp: TP, run: Any) -> None:
        handled.extend(r.offset for r in run)

    async def across_a_rebalance(_tp: TP, run: Any) -> None:
        await handler(_tp, run)
        app.rebalancing_count += 1  # a rebalance began while the run awaited its sinks

    async def deliver() -> None:
        await consumer._deliver_run(tp, [_Rec(o) for o in range(5)], handler)
        await consumer._deliver_run(tp, [_Rec(o) for o in range(5, 9)], across_a_rebalance)

    asyncio.run(deliver())
    assert handled == list(range(9))
    # Only the first run counts: the second is handled again from the last commit.
    assert consumer._new_offset(tp) == 5
    assert consumer._read_offset[tp] == 4
    assert not consumer._unacked_messages
