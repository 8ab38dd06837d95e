"""LogReader: the runs Faust's fetcher skipped, read straight from the log."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from keel.settings import KeelSettings
from keel.streams.log_reader import LogReader

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
