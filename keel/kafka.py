"""Thin factories over confluent-kafka: every Keel client is built here with safe defaults.

Durability defaults (see DESIGN.md): producers use `acks=all` with idempotence;
consumers read committed data only and never auto-commit, so offsets move after the
side effect is done. Every topic a Keel component creates goes through `ensure_topics`,
the one place that decides its replication: the operator's `KEEL_REPLICATION_FACTOR` and
`KEEL_MIN_INSYNC_REPLICAS` when set, else the cluster's own defaults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType, TopicMetadata

from keel.durability import ClusterDurability
from keel.errors import KafkaEdgeError
from keel.settings import KeelSettings, get_settings

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    # Java's partitioner (also aiokafka's and Faust's): a key lands on the same partition
    # whichever client wrote it, so stream tables and query routing agree with producers.
    "partitioner": "murmur2_random",
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
}


def make_producer(settings: KeelSettings | None = None, **overrides: Any) -> Producer:
    settings = settings or get_settings()
    return Producer(settings.kafka_config(**{**PRODUCER_DEFAULTS, **overrides}))


def make_consumer(
    group_id: str, settings: KeelSettings | None = None, **overrides: Any
) -> Consumer:
    settings = settings or get_settings()
    config = {**CONSUMER_DEFAULTS, "group.id": group_id, **overrides}
    return Consumer(settings.kafka_config(**config))


# For one-shot commands: librdkafka logs every failed connection attempt (every 50 ms) to
# stderr, which buries the one line the command ends with. Pass as `logger=SILENT_LOG`.
_log = logging.getLogger(__name__)
SILENT_LOG = logging.getLogger("keel.librdkafka.silent")
SILENT_LOG.addHandler(logging.NullHandler())
SILENT_LOG.propagate = False


@contextmanager
def kafka_call(context: str, timeout: float) -> Iterator[None]:
    """A librdkafka error, or a broker that does not answer in time, becomes one
    KafkaEdgeError saying what was being done."""
    try:
        yield
    except KafkaException as exc:
        raise KafkaEdgeError.from_kafka_error(exc.args[0], context) from exc
    except FutureTimeout:
        raise KafkaEdgeError(
            f"{context}: no answer from the brokers within {timeout:g}s", retriable=True
        ) from None


@contextmanager
def naming_brokers(settings: KeelSettings) -> Iterator[None]:
    """Prefix a KafkaEdgeError with the bootstrap servers, so a command's one-line error says
    which cluster it could not reach."""
    try:
        yield
    except KafkaEdgeError as exc:
        raise KafkaEdgeError(
            f"Kafka at {settings.bootstrap_servers}: {exc}", code=exc.code, retriable=exc.retriable
        ) from None


def has_record(msg: Message, context: str = "consuming") -> bool:
    """Whether a consumed message holds a record. A partition's end is skipped quietly,
    another error is logged and skipped, unless librdkafka calls it fatal: then it raises
    KafkaEdgeError naming `context`."""
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        _log.warning("consumer error: %s", error.str())
        if error.fatal():
            raise KafkaEdgeError.from_kafka_error(error, context)
    return False


def make_admin(settings: KeelSettings | None = None, **overrides: Any) -> AdminClient:
    settings = settings or get_settings()
    return AdminClient(settings.kafka_config(**overrides))


@dataclass(frozen=True)
class TopicSpec:
    """A topic as code: name, partitions, replication and per-topic configs."""

    name: str
    partitions: int = 1
    # -1: Keel's choice, made by `for_cluster` (KEEL_REPLICATION_FACTOR, else the brokers'
    # default.replication.factor). A component never names a number of its own.
    replication_factor: int = -1
    config: dict[str, str] = field(default_factory=dict)

    def for_cluster(self, settings: KeelSettings) -> TopicSpec:
        """The topic as Keel creates it: what the spec leaves open, the operator's settings
        fill in; what they leave open too stays for the brokers' defaults (replication -1 is
        the brokers' default.replication.factor, KIP-464; a topic without min.insync.replicas
        follows the brokers' value)."""
        replication = self.replication_factor
        if replication < 0 and settings.replication_factor is not None:
            replication = settings.replication_factor
        config = dict(self.config)
        if settings.min_insync_replicas is not None:
            config.setdefault("min.insync.replicas", str(settings.min_insync_replicas))
        return TopicSpec(self.name, self.partitions, replication, config)

    def to_new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=dict(self.config),
        )


def ensure_topics(
    admin: AdminClient,
    specs: Iterable[TopicSpec],
    timeout: float = 30.0,
    settings: KeelSettings | None = None,
) -> list[str]:
    """Create the topics that do not exist yet, replicated as `TopicSpec.for_cluster` says;
    return the names created.

    An existing topic is left as it is (it may hold data); any other error is raised.
    """
    settings = settings or get_settings()
    specs = [spec.for_cluster(settings) for spec in specs]
    if not specs:
        return []
    futures = admin.create_topics([s.to_new_topic() for s in specs], request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            with kafka_call(f"creating topic {name}", timeout):
                future.result(timeout=timeout)
            created.append(name)
        except KafkaEdgeError as exc:
            if exc.code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def cluster_durability(admin: AdminClient, timeout: float = 15.0) -> ClusterDurability:
    """What the brokers give a new topic, read from the brokers themselves (DescribeConfigs of
    each broker: every one must answer, and the most cautious answer wins)."""
    with kafka_call("describing the cluster", timeout):
        nodes = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout).nodes
    configs = []
    for node in nodes:  # librdkafka takes one broker per DescribeConfigs call
        resource = ConfigResource(ResourceType.BROKER, str(node.id))
        with kafka_call(f"reading the configs of broker {node.id}", timeout):
            [future] = admin.describe_configs([resource], request_timeout=timeout).values()
            entries = future.result(timeout=timeout)
        configs.append({key: entry.value for key, entry in entries.items()})
    if not configs:
        raise KafkaEdgeError("describing the cluster: the brokers list no broker")

    def number(key: str) -> int:
        return min(int(c.get(key) or 1) for c in configs)

    def any_true(key: str) -> bool:
        return any(str(c.get(key)).lower() == "true" for c in configs)

    return ClusterDurability(
        brokers=len(nodes),
        default_replication=number("default.replication.factor"),
        min_insync_replicas=number("min.insync.replicas"),
        unclean_leader_election=any_true("unclean.leader.election.enable"),
        auto_create_topics=any_true("auto.create.topics.enable"),
    )


def topic_replication(admin: AdminClient, settings: KeelSettings, timeout: float = 15.0) -> int:
    """The replication factor a topic Keel creates gets, as a number: for a client that cannot
    leave it to the brokers (Faust's settings take no -1)."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    try:
        return cluster_durability(admin, timeout).default_replication
    except KafkaEdgeError as exc:  # e.g. a managed cluster that denies DescribeConfigs
        raise KafkaEdgeError(
            f"{exc} (the cluster's default.replication.factor is needed; "
            "or set KEEL_REPLICATION_FACTOR)",
            code=exc.code,
            retriable=exc.retriable,
        ) from None


def wait_for_topics(
    admin: AdminClient, names: Iterable[str], timeout: float = 30.0
) -> dict[str, TopicMetadata]:
    """Block until every named topic has a leader for each partition (metadata settled);
    return their metadata as seen then (asking again may reach a broker that lags behind)."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        with kafka_call("listing topics", timeout):
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        ready = {
            name
            for name, topic in metadata.topics.items()
            if topic.error is None
            and topic.partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        }
        if wanted <= ready:
            return {name: metadata.topics[name] for name in wanted}
        if time.monotonic() > deadline:
            raise KafkaEdgeError(f"topics not ready after {timeout}s: {sorted(wanted - ready)}")
        time.sleep(0.1)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    for name, future in admin.delete_topics(names, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaEdgeError.from_kafka_error(err, f"deleting topic {name}") from exc
