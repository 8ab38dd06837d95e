"""Consumer lag: how far each consumer group is behind the end of its topics.

Read from the brokers alone (committed offsets and log-end offsets through the admin API), so
it works for every group on the cluster, Keel's or not: stream workers, job workers, a
Connect sink. Ops scale a group on this figure, up to one consumer per partition."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from keel.errors import KeelError
from keel.kafka import kafka_call

NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: the group never committed this partition


class UnknownGroup(KeelError):
    """The group has no members and no committed offsets: it does not exist (any more)."""


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: nothing committed yet, counted from the log start
    end: int  # log-end offset as a read_committed consumer sees it
    lag: int


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "lag": self.total,
            "partitions": [p.__dict__ for p in self.partitions],
        }


def list_groups(admin: AdminClient, timeout: float = 10.0) -> list[str]:
    with kafka_call("listing consumer groups", timeout):
        result = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    return sorted(g.group_id for g in result.valid)


def group_lag(admin: AdminClient, group: str, timeout: float = 10.0) -> GroupLag:
    """Lag per partition the group has committed or is assigned; UnknownGroup if the
    brokers know no such group."""
    with kafka_call(f"describing group {group}", timeout):
        [described] = admin.describe_consumer_groups([group], request_timeout=timeout).values()
        description = described.result(timeout=timeout)
        [listed] = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        ).values()
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in listed.result(timeout=timeout).topic_partitions
            if tp.offset != NO_OFFSET
        }
    assigned = {
        (tp.topic, tp.partition)
        for member in description.members
        for tp in (member.assignment.topic_partitions if member.assignment else [])
    }
    if description.state == ConsumerGroupState.DEAD and not committed:
        raise UnknownGroup(f"no consumer group {group!r} (no members, no committed offsets)")
    keys = sorted(committed.keys() | assigned)
    ends = _offsets(admin, keys, OffsetSpec.latest(), timeout)
    starts = _offsets(
        admin, [k for k in keys if k not in committed], OffsetSpec.earliest(), timeout
    )
    partitions = tuple(
        PartitionLag(
            topic,
            partition,
            committed.get((topic, partition)),
            ends[(topic, partition)],
            max(
                0,
                ends[(topic, partition)]
                - committed.get((topic, partition), starts.get((topic, partition), 0)),
            ),
        )
        for topic, partition in keys
    )
    return GroupLag(group, description.state.name, len(description.members), partitions)


def _offsets(
    admin: AdminClient, keys: Iterable[tuple[str, int]], spec: OffsetSpec, timeout: float
) -> dict[tuple[str, int], int]:
    request = {TopicPartition(topic, partition): spec for topic, partition in keys}
    if not request:
        return {}
    futures = admin.list_offsets(
        request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
    )
    with kafka_call("reading end offsets", timeout):
        return {
            (tp.topic, tp.partition): f.result(timeout=timeout).offset for tp, f in futures.items()
        }
