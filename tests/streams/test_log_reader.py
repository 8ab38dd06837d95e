"""LogReader: the runs Faust's fetcher skipped, read straight from the log."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP

from keel.settings import KeelSettings
from keel.streams.app import _delta, _first, _offset, _raw
from keel.streams.engine import Raw
from keel.streams.log_reader import LogReader
from keel.streams.processors.user_activity import UserActivity
from keel.streams.testing import faust_context

pytestmark = pytest.mark.integration


def _topic_of_ten(kafka_bootstrap: str, new_topic: Callable[..., str]) -> str:
    topic = new_topic("log-reader", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, f"v{i}".encode(), key=b"k", partition=1)
    assert producer.flush(30) == 0
    return topic


def test_a_run_is_read_whole_and_in_order(
    kafka_bootstrap: str, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = _topic_of_ten(kafka_bootstrap, new_topic)
    reader = LogReader(KeelSettings(bootstrap_servers=kafka_bootstrap), group_id, timeout=30)
    try:
        run = reader.read(topic, 1, 3, 7)
        assert [(m.offset(), m.value()) for m in run] == [
            (o, f"v{o}".encode()) for o in (3, 4, 5, 6)
        ]
        # A run that reaches past the log's end holds what the log has.
        assert [m.offset() for m in reader.read(topic, 1, 8, 20)] == [8, 9]
        assert reader.read(topic, 0, 0, 5) == []  # an empty partition
    finally:
        reader.close()


def test_a_partition_starts_at_the_groups_commit_or_the_logs_first_offset(
    kafka_bootstrap: str, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = _topic_of_ten(kafka_bootstrap, new_topic)
    reader = LogReader(KeelSettings(bootstrap_servers=kafka_bootstrap), group_id, timeout=30)
    try:
        assert reader.start(topic, 1) == 0  # nothing committed: the earliest
        committer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id})
        committer.commit(offsets=[TopicPartition(topic, 1, 6)], asynchronous=False)
        committer.close()
        assert reader.start(topic, 1) == 6
    finally:
        reader.close()


def test_a_worker_applies_in_place_the_runs_it_was_not_handed_read_from_the_log(
    kafka_bootstrap: str, new_topic: Callable[..., str], group_id: str, tmp_path: Path
) -> None:
    """Either stage (source records, re-keyed deltas) gets the records it may apply in
    offset order: those delivered, and the runs missing before and among them read from
    the log in their place."""
    topic = new_topic("log-fill", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(8):
        producer.produce(topic, f"v{i}".encode(), key=b"k", partition=0)
        producer.produce(topic, json.dumps({"n": i}).encode(), key=b"p", partition=1)
    assert producer.flush(30) == 0
    sources, deltas = TP(topic, 0), TP(topic, 1)

    async def plan() -> tuple[Any, Any, list[Any], list[Any]]:
        async with faust_context([UserActivity()], tmp_path) as run:
            app = run.app
            app.log_reader = LogReader(
                KeelSettings(bootstrap_servers=kafka_bootstrap), group_id, timeout=30
            )
            applying: list[Any] = []
            read: list[Any] = []
            try:
                delivered = [Raw(b"d", 0, o, 0, b"k", topic) for o in (0, 1, 5, 7)]
                raws = await app._plan(
                    sources, delivered, applying, read, offset_of=_offset, from_log=_raw
                )
                given = [(o, b"p", {"n": -1}) for o in (3, 4)]
                from_log = functools.partial(_delta, deltas)
                folded = await app._plan(
                    deltas, given, applying, read, offset_of=_first, from_log=from_log
                )
            finally:
                app.log_reader.close()
            return raws, folded, applying, read

    raws, folded, applying, read = asyncio.run(plan())
    assert [(r.offset, r.value) for r in raws] == [
        (0, b"d"), (1, b"d"), (2, b"v2"), (3, b"v3"), (4, b"v4"), (5, b"d"), (6, b"v6"),
        (7, b"d"),
    ]  # fmt: skip
    assert folded == [
        (0, b"p", {"n": 0}), (1, b"p", {"n": 1}), (2, b"p", {"n": 2}), (3, b"p", {"n": -1}),
        (4, b"p", {"n": -1}),
    ]  # fmt: skip
    assert read == [(sources, 2, 5), (sources, 6, 7), (deltas, 0, 3)]
    assert applying == [(sources, 7), (deltas, 4)]
