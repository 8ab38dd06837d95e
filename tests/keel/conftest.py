"""Fixtures of the core's fault and durability tests: a private three-broker cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port
from keel.settings import get_settings


@pytest.fixture
def three_brokers(tmp_path: Path) -> Iterator[LocalKafka]:
    """`keel broker up --brokers 3` on free ports: default.replication.factor 3,
    min.insync.replicas 2, dying with the test run."""
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


def replication(admin: AdminClient, topics: list[str]) -> dict[str, tuple[int, int]]:
    """(replicas, effective min.insync.replicas) of each topic, read from the brokers; a
    topic whose partitions differ in replicas shows the fewest. A broker that does not know a
    topic created a moment ago (another one answered wait_for_topics) is asked again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return _replication(admin, topics)
        except KafkaException as exc:
            if (
                exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.2)


def _replication(admin: AdminClient, topics: list[str]) -> dict[str, tuple[int, int]]:
    metadata = admin.list_topics(timeout=10).topics
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    out = {}
    for resource, future in admin.describe_configs(resources, request_timeout=10).items():
        min_isr = int(future.result(10)["min.insync.replicas"].value)
        if resource.name not in metadata:  # the metadata came from a broker that lags behind
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        partitions = metadata[resource.name].partitions.values()
        out[resource.name] = (min(len(p.replicas) for p in partitions), min_isr)
    return out
