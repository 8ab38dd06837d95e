"""`keel scale NAME N`: N processes of one consumer group of the local stack, each its own
process in the group on its own port, never more than the partitions of what it reads.

Components declare their consumer groups through the `keel.scaling` entry point (a callable
`(settings) -> list[Scalable]`); the stack lists each one's replicas 1..N (`stack_services`),
so `keel up`, `keel status`, `keel down` and Prometheus's targets all see them. The count of a
scaled group is kept in KEEL_HOME/run/scale.json until the stack goes down.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from keel.errors import LocalStackError
from keel.kafka import SILENT_LOG, kafka_call, make_admin, naming_brokers
from keel.local.process import stop_together
from keel.local.services import ProcessService, Progress, Service
from keel.settings import KeelSettings

# Replica i of a job type or sink serves on its first replica's port + 100 * (i - 1): the
# services' own ports are consecutive (8095 jobs, 8096 outbox, ...), so +1 would collide.
REPLICA_PORT_STRIDE = 100


class ScaleError(LocalStackError):
    """A `keel scale` refused before anything was started or stopped."""


@dataclass(frozen=True)
class Scalable:
    """One consumer group of the local stack that `keel scale` runs replicas of."""

    name: str  # `keel scale NAME`: the name of its Kubernetes workload too
    group: str  # the consumer group every replica joins
    topics: tuple[str, ...]  # what it consumes: the most partitions among them cap the replicas
    # Replica i (from 1), the same process for the same i. A replica may be another service of
    # the stack (the job types' first is the jobs worker that runs every type).
    replica: Callable[[int], ProcessService]
    default: int = 1  # replicas the stack runs until scaled
    aliases: tuple[str, ...] = ()  # other names `keel scale` takes (a job type's bare name)

    def answers_to(self, name: str) -> bool:
        return name == self.name or name in self.aliases


def replica_port(first: int, index: int) -> int:
    return first + REPLICA_PORT_STRIDE * (index - 1)


def replica_name(first: str, index: int) -> str:
    """`pgsink`, `pgsink-2`, ...: the first keeps the service's own name."""
    return first if index == 1 else f"{first}-{index}"


def declared(settings: KeelSettings) -> list[Scalable]:
    """Every scalable consumer group the installed components declare."""
    found: list[Scalable] = []
    for entry in entry_points(group="keel.scaling"):
        factory: Callable[[KeelSettings], list[Scalable]] = entry.load()
        found.extend(factory(settings))
    return found


# -- the recorded counts --------------------------------------------------------------------


def _scale_file(settings: KeelSettings) -> Path:
    return settings.home / "run" / "scale.json"


def recorded_counts(settings: KeelSettings) -> dict[str, int]:
    try:
        counts = json.loads(_scale_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(k): int(v) for k, v in counts.items() if isinstance(v, int)}


def _record_count(settings: KeelSettings, scalable: Scalable, count: int) -> None:
    counts = recorded_counts(settings)
    counts.pop(scalable.name, None)
    if count != scalable.default:
        counts[scalable.name] = count
    path = _scale_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts, sort_keys=True))
    tmp.replace(path)


def forget_counts(settings: KeelSettings) -> None:
    """The stack went down: a later `keel up` runs what its settings say."""
    _scale_file(settings).unlink(missing_ok=True)


def replicas(settings: KeelSettings, scalables: Iterable[Scalable]) -> list[ProcessService]:
    """The replicas the stack runs now: the recorded count of each group, else its default."""
    counts = recorded_counts(settings)
    return [s.replica(i) for s in scalables for i in range(1, counts.get(s.name, s.default) + 1)]


# -- scaling ---------------------------------------------------------------------------------


def find(scalables: list[Scalable], name: str) -> Scalable:
    for scalable in scalables:
        if scalable.answers_to(name):
            return scalable
    known = ", ".join(sorted(s.name for s in scalables))
    raise ScaleError(f"no consumer group of the local stack is called {name!r}; known: {known}")


def partitions(
    settings: KeelSettings, topics: Iterable[str], timeout: float = 15.0
) -> dict[str, int]:
    """Each topic's partition count on the cluster; a missing topic is an error naming it."""
    admin = make_admin(settings, logger=SILENT_LOG)
    with naming_brokers(settings), kafka_call("reading the topics' partitions", timeout):
        metadata = admin.list_topics(timeout=timeout)
    counts: dict[str, int] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ScaleError(
                f"topic {topic} does not exist on Kafka at {settings.bootstrap_servers}: "
                "start the stack first (`keel up`)"
            )
        counts[topic] = len(meta.partitions)
    return counts


def check_count(scalable: Scalable, count: int, topic_partitions: dict[str, int]) -> None:
    """Refuse a count the group cannot use: one consumer per partition at most, so a replica
    past the partition count would hold nothing."""
    if count < 1:
        raise ScaleError(
            f"{scalable.name} needs at least 1 replica, not {count} (`keel down` stops the stack)"
        )
    ceiling = max(topic_partitions.values())
    if count > ceiling:
        read = ", ".join(f"{t} ({n} partitions)" for t, n in topic_partitions.items())
        raise ScaleError(
            f"cannot run {count} replicas of {scalable.name}: it reads {read}, so at most "
            f"{ceiling} consumers of group {scalable.group} get a partition"
        )


@dataclass(frozen=True)
class ScaleResult:
    scalable: Scalable
    count: int
    partitions: dict[str, int]
    started: list[ProcessService]
    stopped: list[str]
    running: list[ProcessService]  # replicas 1..count


def scale(
    settings: KeelSettings,
    name: str,
    count: int,
    progress: Progress,
    *,
    after: Callable[[], None] = lambda: None,
) -> ScaleResult:
    """Run replicas 1..`count` of the group called `name` (starting those not running) and
    stop the ones above; record the count; then `after()` (Prometheus reloads its targets).
    Refused (ScaleError, nothing started) for an unknown name or a count past the partitions."""
    from keel.local.stack import start_all  # the stack lists this module's replicas

    scalable = find(declared(settings), name)
    topic_partitions = partitions(settings, scalable.topics)
    check_count(scalable, count, topic_partitions)
    before = recorded_counts(settings).get(scalable.name, scalable.default)
    wanted = [scalable.replica(i) for i in range(1, count + 1)]
    # Above the count: whatever of them runs (recorded, the default, or left by a crash).
    highest = max(before, scalable.default, *topic_partitions.values())
    surplus = [scalable.replica(i) for i in range(count + 1, highest + 1)]
    to_start: list[Service] = list(wanted)
    started = start_all(to_start, progress)  # on a failure it stops what it started
    stopped = stop_together([s.process for s in reversed(surplus)])
    for process in stopped:
        progress(f"stopped {process.name}")
    _record_count(settings, scalable, count)
    after()
    return ScaleResult(
        scalable,
        count,
        topic_partitions,
        [s for s in started if isinstance(s, ProcessService)],
        [p.name for p in stopped],
        wanted,
    )
