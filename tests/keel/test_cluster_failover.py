"""`keel broker up --brokers 3`: a replicated cluster survives the loss of one broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from keel.kafka import TopicSpec, ensure_topics, make_consumer, make_producer, wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port
from keel.settings import get_settings

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalKafka]:
    settings = get_settings()
    cluster = LocalKafka(
        tmp_path / "cluster",
        libs_home=settings.home,
        version=settings.kafka_version,
        brokers=3,
        base_port=free_base_port(3),
        heap="384m",
        die_with_parent=True,
    )
    cluster.up(progress=lambda _m: None)
    yield cluster
    cluster.down(progress=lambda _m: None)


def test_rf3_topic_is_readable_after_a_broker_is_killed(cluster: LocalKafka) -> None:
    bootstrap = cluster.bootstrap()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=10)
    assert len(metadata.brokers) == 3

    ensure_topics(admin, [TopicSpec("orders", 3, 3)])
    wait_for_topics(admin, ["orders"])
    config_text = cluster.nodes()[0].config_file.read_text()
    assert "min.insync.replicas=2" in config_text and "default.replication.factor=3" in config_text
    assert all(
        len(p.replicas) == 3
        for p in admin.list_topics("orders", timeout=10).topics["orders"].partitions.values()
    )

    overrides = {"bootstrap.servers": bootstrap}
    producer = make_producer(**overrides)
    for i in range(100):
        producer.produce("orders", key=str(i % 10).encode(), value=f"before-{i}".encode())
    assert producer.flush(30) == 0

    cluster.kill_node(2)  # SIGKILL, as a crash

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
