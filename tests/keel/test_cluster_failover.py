"""`keel broker up --brokers 3`: a replicated cluster survives the loss of one broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from keel.kafka import TopicSpec, ensure_topics, make_consumer, make_producer, wait_for_topics
from keel.local.broker import LocalKafka
from tests.keel.conftest import replication

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_rf3_topic_is_readable_after_a_broker_is_killed(three_brokers: LocalKafka) -> None:
    cluster = three_brokers
    bootstrap = cluster.bootstrap()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.brokers) == 3

    # Created as every Keel component creates a topic (no replication of its own): what
    # makes the kill meaningful is the cluster's default, three copies, two in sync.
    ensure_topics(admin, [TopicSpec("orders", 3)])
    wait_for_topics(admin, ["orders"])
    assert replication(admin, ["orders"]) == {"orders": (3, 2)}
    partitions = admin.list_topics("orders", timeout=10).topics["orders"].partitions.values()
    assert all(len(p.isrs) == 3 for p in partitions), "every replica in sync before the kill"
    # the broker killed leads a partition: its loss moves a leader
    leader = next(iter(partitions)).leader

    overrides = {"bootstrap.servers": bootstrap}
    producer = make_producer(**overrides)
    for i in range(100):
        producer.produce("orders", key=str(i % 10).encode(), value=f"before-{i}".encode())
    assert producer.flush(30) == 0

    cluster.kill_node(leader)  # SIGKILL, as a crash

    # acks=all with min ISR 2 still accepts writes with two of three replicas alive.
    for i in range(100):
        producer.produce("orders", key=str(i % 10).encode(), value=f"after-{i}".encode())
    assert producer.flush(60) == 0

    consumer = make_consumer("failover-reader", **overrides)
    consumer.subscribe(["orders"])
    values: set[bytes] = set()
    deadline = time.monotonic() + 90
    while len(values) < 200 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.add(msg.value())
    consumer.close()
    assert len(values) == 200
