"""Consumer lag: how far each consumer group is behind the end of its topics, in messages and
in seconds.

Read from the brokers alone (committed offsets and log-end offsets through the admin API), so
it works for every group on the cluster, Keel's or not: stream workers, job workers, a
Connect sink. Ops scale a group on this figure, up to one consumer per partition.

Seconds: how old the next unconsumed record of a partition is (now minus its timestamp),
read by `RecordTimes`, an assign-only consumer that joins no group and commits nothing.

A Faust app's members also hold partitions of the app's own internal topics
(`<app id>-<table>-changelog`, `<app id>-__assignor-__leader`) to restore tables and keep
standbys; Faust never commits offsets there, so they are no lag. They are reported apart
(`GroupLag.held`), never in the total, which is the lag of the app's source topics."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from keel.errors import KeelError
from keel.kafka import SILENT_LOG, kafka_call, make_consumer
from keel.settings import KeelSettings

NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: the group never committed this partition
CHANGELOG_SUFFIX = "-changelog"
FAUST_LEADER_SUFFIX = "-__assignor-__leader"

Key = tuple[str, int]  # (topic, partition)


class UnknownGroup(KeelError):
    """The group has no members and no committed offsets: it does not exist (any more)."""


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: nothing committed yet, counted from the log start
    end: int  # log-end offset as a read_committed consumer sees it
    lag: int
    seconds: float | None = None  # age of the next unconsumed record; None: not read

    def to_dict(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "lag_seconds": self.seconds,
        }


@dataclass(frozen=True)
class HeldPartition:
    """A partition of a Faust app's internal topic that a member holds and never commits.

    role: `active` (a changelog of a partition the member owns: its tables restore from it
    after a rebalance, then append to it), `standby` (a changelog followed to keep a hot copy
    of another member's tables) or `leader` (Faust's assignor topic)."""

    topic: str
    partition: int
    end: int
    role: str
    member: str  # the holder's client id and host

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int
    partitions: tuple[PartitionLag, ...]
    held: tuple[HeldPartition, ...] = field(default=())

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def seconds(self) -> float | None:
        """The oldest unconsumed record's age over the group's partitions (0 with no lag);
        None when a lagging partition's age was not read."""
        ages = [p.seconds if p.lag else 0.0 for p in self.partitions]
        if any(age is None for age in ages):
            return None
        return max((age for age in ages if age is not None), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "lag": self.total,
            "lag_seconds": self.seconds,
            "partitions": [p.to_dict() for p in self.partitions],
            "held": [h.to_dict() for h in self.held],
        }


def list_groups(admin: AdminClient, timeout: float = 10.0) -> list[str]:
    """Every consumer group the brokers know. Raises KafkaEdgeError when no broker answered:
    librdkafka reports that as an empty list beside its errors, which must not read as
    "no consumer groups"."""
    with kafka_call("listing consumer groups", timeout):
        # librdkafka's own timeout ends the call; the future waits a second longer, since
        # equal timeouts race and pick at random how an unreachable cluster is reported.
        result = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout + 1)
        if result.errors and not result.valid:
            first = result.errors[0]
            if first.code() == KafkaError._TIMED_OUT:
                raise FutureTimeout
            raise KafkaException(first)
    return sorted(g.group_id for g in result.valid)


def is_internal_topic(group: str, topic: str) -> bool:
    """Whether `topic` is one of the Faust app `group`'s own topics that it never commits."""
    return topic.startswith(f"{group}-") and topic.endswith((CHANGELOG_SUFFIX, FAUST_LEADER_SUFFIX))


def group_lag(
    admin: AdminClient,
    group: str,
    timeout: float = 10.0,
    times: RecordTimes | None = None,
) -> GroupLag:
    """Lag per partition the group has committed or is assigned (with `times`, in seconds
    too); UnknownGroup if the brokers know no such group."""
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
    if description.state == ConsumerGroupState.DEAD and not committed:
        raise UnknownGroup(f"no consumer group {group!r} (no members, no committed offsets)")
    holders: dict[Key, list[tuple[str, set[int]]]] = {}
    assigned: set[Key] = set()
    for member in description.members:
        tps = member.assignment.topic_partitions if member.assignment else []
        owned = {tp.partition for tp in tps if not is_internal_topic(group, tp.topic)}
        name = f"{member.client_id}@{member.host.lstrip('/')}"
        for tp in tps:
            assigned.add((tp.topic, tp.partition))
            holders.setdefault((tp.topic, tp.partition), []).append((name, owned))
    internal = sorted(k for k in assigned if is_internal_topic(group, k[0]) and k not in committed)
    keys = sorted((committed.keys() | assigned) - set(internal))
    ends = offsets(admin, [*keys, *internal], OffsetSpec.latest(), timeout)
    starts = offsets(admin, [k for k in keys if k not in committed], OffsetSpec.earliest(), timeout)
    positions = {k: committed.get(k, starts.get(k, 0)) for k in keys}
    lags = {k: max(0, ends[k] - positions[k]) for k in keys}
    ages = times.ages({k: positions[k] for k in keys if lags[k]}) if times else {}
    partitions = tuple(
        PartitionLag(
            topic,
            partition,
            committed.get((topic, partition)),
            ends[(topic, partition)],
            lags[(topic, partition)],
            (ages.get((topic, partition)) if lags[(topic, partition)] else 0.0) if times else None,
        )
        for topic, partition in keys
    )
    held = tuple(
        HeldPartition(
            topic, partition, ends[(topic, partition)], _role(topic, partition, name, owned), name
        )
        for topic, partition in internal
        for name, owned in holders[(topic, partition)]
    )
    return GroupLag(group, description.state.name, len(description.members), partitions, held)


def _role(topic: str, partition: int, member: str, owned: set[int]) -> str:
    if topic.endswith(FAUST_LEADER_SUFFIX):
        return "leader"
    # Faust's tables are partitioned as their source: the member restores (and writes) the
    # changelog partitions whose numbers it owns, and keeps standbys of the others.
    return "active" if partition in owned else "standby"


class RecordTimes:
    """Timestamps of the records at given offsets, read by one assign-only consumer: it joins
    no group and commits nothing, so it is invisible to `list_groups`. An answer is cached
    until the offset moves, so a watcher or exporter re-reads only partitions that moved."""

    def __init__(self, settings: KeelSettings, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._consumer: Consumer | None = None
        self._settings = settings
        self._cache: dict[tuple[str, int, int], float] = {}
        self._touched: set[tuple[str, int, int]] = set()

    def ages(self, positions: dict[Key, int], now: float | None = None) -> dict[Key, float]:
        """Seconds since each (topic, partition)'s record at `positions` was written (the
        next one after it where it was compacted away or is a transaction marker; the oldest
        kept where retention deleted it). A partition whose record was not read in time is
        left out."""
        stamps = self.timestamps(positions)
        now = time.time() if now is None else now
        return {k: max(0.0, now - stamp) for k, stamp in stamps.items()}

    def timestamps(self, positions: dict[Key, int]) -> dict[Key, float]:
        wanted = {k: o for k, o in positions.items() if (*k, o) not in self._cache}
        if wanted:
            self._read(wanted)
        self._touched.update((*k, o) for k, o in positions.items())
        return {k: self._cache[(*k, o)] for k, o in positions.items() if (*k, o) in self._cache}

    def sweep(self) -> None:
        """Forget the answers not asked for since the last sweep (offsets that moved on)."""
        self._cache = {k: v for k, v in self._cache.items() if k in self._touched}
        self._touched = set()

    def _read(self, wanted: dict[Key, int]) -> None:
        consumer = self._consumer or self._open()
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in wanted.items()])
        remaining = dict(wanted)
        deadline = time.monotonic() + self.timeout
        try:
            while remaining and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                if key not in remaining:
                    continue
                kind, stamp = msg.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE:
                    self._cache[(*key, remaining[key])] = stamp / 1000
                del remaining[key]
        finally:
            consumer.unassign()

    def _open(self) -> Consumer:
        # Small fetches: one record per partition is wanted, not the batches after it.
        self._consumer = make_consumer(
            "keel.lag.times",
            self._settings,
            logger=SILENT_LOG,
            **{"fetch.max.bytes": 1 << 20, "max.partition.fetch.bytes": 64 << 10},
        )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def offsets(
    admin: AdminClient, keys: Iterable[Key], spec: OffsetSpec, timeout: float
) -> dict[Key, int]:
    """The offsets `spec` names (earliest, latest) of each (topic, partition), as a
    read_committed consumer sees them."""
    request = {TopicPartition(topic, partition): spec for topic, partition in keys}
    if not request:
        return {}
    futures = admin.list_offsets(
        request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
    )
    with kafka_call("reading offsets", timeout):
        return {
            (tp.topic, tp.partition): f.result(timeout=timeout).offset for tp, f in futures.items()
        }
