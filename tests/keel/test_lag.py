"""`keel lag` against the real broker: committed offsets, log ends, assigned partitions that
never committed, lag in seconds (the age of the next unconsumed record), a Faust app's
internal partitions kept out of its lag, and a clear error for a group that does not exist."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keel.cli.lag import age
from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.lag import RecordTimes, group_lag, list_groups
from keel.settings import KeelSettings

KEEL = str(Path(sys.executable).parent / "keel")


def _fill(
    bootstrap: str, topic: str, per_partition: dict[int, int], written: float | None = None
) -> None:
    """`count` records into each partition; with `written`, stamped with that Unix time."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    stamp = {} if written is None else {"timestamp": int(written * 1000)}
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, f"m{i}".encode(), partition=partition, **stamp)
    assert producer.flush(30) == 0


# What a fresh broker answers while it elects the group's coordinator: try again.
_COORDINATOR_SETTLING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


def _commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    """Commit `offsets` for `group`, retrying what the broker calls retriable (a fresh
    broker answers NOT_COORDINATOR while it creates __consumer_offsets)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                return
            except KafkaException as exc:
                error = exc.args[0]
                settling = error.code() in _COORDINATOR_SETTLING or error.retriable()
                if not settling or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the broker's own retry backoff, not a wait for an effect
    finally:
        consumer.close()


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
    # a group that read 3 of partition 0, all of partition 1, nothing of partition 2
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 2)])

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
    from keel.local.ports import free_base_port

    # Below the ephemeral range: a client connecting to a free ephemeral port can get that very
    # port as its own source port and talk to itself (TCP self-connect), and read an answer.
    nowhere = f"127.0.0.1:{free_base_port()}"  # nothing listens there
    result = _keel(nowhere, "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"keel: error: Kafka at {nowhere}: listing consumer groups: "
        "no answer from the brokers within 2s"
    ), result.stderr


def test_seconds_are_the_age_of_the_next_unconsumed_record(
    kafka_bootstrap: str, admin: AdminClient, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = new_topic("lagsec", 3)
    old, recent = time.time() - 600, time.time() - 60
    _fill(kafka_bootstrap, topic, {0: 3, 1: 2}, written=old)  # offsets 0-2 and 0-1: 10 min old
    _fill(kafka_bootstrap, topic, {0: 2, 2: 1}, written=recent)  # offsets 3-4 and 0: 1 min old
    # partition 0: read past the old records, next is a recent one; partition 1: caught up;
    # partition 2: at its start, its one recent record next
    _commit(
        kafka_bootstrap,
        group_id,
        [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 2), TopicPartition(topic, 2, 0)],
    )

    settings = KeelSettings(bootstrap_servers=kafka_bootstrap)
    times = RecordTimes(settings)
    try:
        report = group_lag(admin, group_id, times=times)
    finally:
        times.close()
    ages = {p.partition: (p.lag, p.seconds) for p in report.partitions}
    assert ages[1] == (0, 0.0)
    for partition in (0, 2):
        lag, seconds = ages[partition]
        assert lag > 0 and seconds is not None and 60 <= seconds < 120, ages
    assert report.seconds == max(ages[0][1] or 0, ages[2][1] or 0)

    # Behind the old records instead: the group's age is theirs.
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 1)])
    shown = _keel(kafka_bootstrap, group_id, "--json")
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.splitlines()
    found = json.loads(line)
    assert found["lag"] == 4 + 1 and 600 <= found["lag_seconds"] < 660, found
    by_partition = {p["partition"]: p for p in found["partitions"]}
    assert 600 <= by_partition[0]["lag_seconds"] < 660 and by_partition[1]["lag_seconds"] == 0

    text = _keel(kafka_bootstrap, group_id, "-p")
    assert text.returncode == 0, text.stderr
    head, *rows = text.stdout.splitlines()
    assert re.fullmatch(rf"{group_id}  empty  members 0  lag 5  behind 10m[0-5]\ds", head), head
    assert f"  {topic}[1]  committed 2  end 2  lag 0  behind 0.0s" in rows


def test_the_reader_of_record_times_is_no_consumer_group(
    kafka_bootstrap: str, admin: AdminClient, new_topic: Callable[..., str], group_id: str
) -> None:
    """The exporter lists every group: its own reader must not become one of them."""
    topic = new_topic("lagsec", 1)
    _fill(kafka_bootstrap, topic, {0: 2})
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 1)])
    times = RecordTimes(KeelSettings(bootstrap_servers=kafka_bootstrap))
    try:
        assert group_lag(admin, group_id, times=times).partitions[0].seconds is not None
        assert "keel.lag.times" not in list_groups(admin)
    finally:
        times.close()


def test_a_faust_apps_changelog_partitions_are_held_apart_never_lag(
    kafka_bootstrap: str, admin: AdminClient, new_topic: Callable[..., str], group_id: str
) -> None:
    """A Faust app's members hold its `<app>-<table>-changelog` partitions (to restore tables
    and keep standbys) and never commit them; the app's lag is its source's alone."""
    source = new_topic("lagsrc", 1)
    changelog = f"{group_id}-counts-changelog"  # Faust's name for table `counts`
    ensure_topics(admin, [TopicSpec(changelog, 2, -1, {})])
    wait_for_topics(admin, [changelog])
    _fill(kafka_bootstrap, source, {0: 4})
    _fill(kafka_bootstrap, changelog, {0: 7, 1: 9})
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )
    consumer.subscribe([source, changelog])
    try:
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) < 3:
            assert time.monotonic() < deadline, "no assignment within 30 s"
            consumer.poll(0.2)
        consumer.commit(offsets=[TopicPartition(source, 0, 4)], asynchronous=False)

        report = group_lag(admin, group_id)
        assert [(p.topic, p.lag) for p in report.partitions] == [(source, 0)]
        assert report.total == 0
        # It owns source partition 0: changelog 0 restores its tables, 1 is a standby.
        assert {(h.topic, h.partition, h.role, h.end) for h in report.held} == {
            (changelog, 0, "active", 7),
            (changelog, 1, "standby", 9),
        }

        text = _keel(kafka_bootstrap, group_id, "-p")
        assert text.returncode == 0, text.stderr
        head, *rows = text.stdout.splitlines()
        assert "lag 0  behind 0.0s" in head
        assert "(internal partitions held, not lag: 1 active, 1 standby)" in head
        assert any(r.startswith(f"  {changelog}[1]  standby  end 9  held by ") for r in rows)
    finally:
        consumer.close()
        delete_topics(admin, [changelog])


def test_ages_read_as_ops_say_them() -> None:
    assert [age(s) for s in (None, 0.0, 4.24, 59.9, 60, 243.7, 3600, 7500)] == [
        "?",
        "0.0s",
        "4.2s",
        "59.9s",
        "1m00s",
        "4m03s",
        "1h00m",
        "2h05m",
    ]
