"""`keel lag` against the real broker: committed offsets, log ends, assigned partitions that
never committed, and a clear error for a group that does not exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keel.lag import group_lag

KEEL = str(Path(sys.executable).parent / "keel")


def _fill(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, f"m{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _keel(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEL_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [KEEL, "lag", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_lag_is_log_end_minus_committed_per_partition(
    kafka_bootstrap: str, admin: AdminClient, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = new_topic("lag", 3)
    _fill(kafka_bootstrap, topic, {0: 5, 1: 2, 2: 4})
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id})
    try:  # a group that read 3 of partition 0, all of partition 1, nothing of partition 2
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 2)], asynchronous=False
        )
    finally:
        consumer.close()

    report = group_lag(admin, group_id)
    rows = {p.partition: (p.committed, p.end, p.lag) for p in report.partitions}
    assert rows == {0: (3, 5, 2), 1: (2, 2, 0)}
    assert report.total == 2 and report.members == 0

    shown = _keel(kafka_bootstrap, group_id, "--json")
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.splitlines()
    assert json.loads(line)["lag"] == 2


def test_assigned_partitions_without_commits_count_from_the_log_start(
    kafka_bootstrap: str, admin: AdminClient, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = new_topic("lag", 2)
    _fill(kafka_bootstrap, topic, {0: 3, 1: 1})
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():  # poll drives the join; nothing is committed
            assert time.monotonic() < deadline, "no assignment within 30 s"
            consumer.poll(0.2)
        report = group_lag(admin, group_id)
        assert report.members == 1
        assert {(p.partition, p.committed, p.lag) for p in report.partitions} == {
            (0, None, 3),
            (1, None, 1),
        }
        text = _keel(kafka_bootstrap, group_id, "--partitions")
        assert text.returncode == 0, text.stderr
        assert f"{topic}[0]  committed -  end 3  lag 3" in text.stdout
    finally:
        consumer.close()


def test_an_unknown_group_is_one_line_and_exit_1(kafka_bootstrap: str, group_id: str) -> None:
    result = _keel(kafka_bootstrap, group_id)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"keel: error: no consumer group '{group_id}' (no members, no committed offsets)"
    )


def test_unreachable_brokers_are_one_line_naming_them_and_exit_1() -> None:
    from keel.local.ports import free_port

    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = _keel(nowhere, "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"keel: error: Kafka at {nowhere}: listing consumer groups: "
        "no answer from the brokers within 2s"
    ), result.stderr
