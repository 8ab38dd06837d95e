"""`keel doctor`: Keel's durability promises checked against a running cluster, line by line.

Responsible for:
- the brokers (each answers) and the controller the cluster names;
- the brokers' settings Keel relies on: unclean leader election off, topic auto-creation off;
- every Keel topic and `__consumer_offsets`: replication and min.insync.replicas judged by
  keel.durability (the rules `keel topics plan` uses), and partitions out of sync now;
- each Keel consumer group's state;
- what components add through the `keel.doctor` entry point (a callable taking the settings
  and returning checks), such as the registry's agreement with the catalog (schemas/).

Reads only: nothing here changes the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from keel.durability import ClusterDurability, durability_problems, fix
from keel.errors import KafkaEdgeError, KeelError
from keel.kafka import cluster_durability, kafka_call
from keel.lag import list_groups
from keel.settings import KeelSettings
from keel.topics import is_kafka_internal

OFFSETS_TOPIC = "__consumer_offsets"
# Groups that are empty by design: dead-letter replays keep their progress there.
_REPLAY_MARK = ".replay"


@dataclass(frozen=True)
class Check:
    """One promise: what was checked, whether it holds, and the figures that say so."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


CheckSource = Callable[[KeelSettings], Iterable[Check]]


def keel_topics(settings: KeelSettings, names: Iterable[str], declared: Iterable[str]) -> list[str]:
    """The topics on the cluster that are Keel's: those topics.toml declares, those the
    settings name (source, dead letters, registry, sinks' sources), the stream app's own
    (`<app id>-...`: changelogs, rekey, Faust's leader topic) and the job topics."""

    def listed(value: str) -> set[str]:
        return {t.strip() for t in value.split(",") if t.strip()}

    named = {
        settings.streams_source_topic,
        settings.streams_dlq_topic,
        settings.registry_topic,
        settings.pgsink_dlq_topic,
        *listed(settings.webhooks_topics),
        *listed(settings.pgsink_topics),
        *listed(settings.archive_topics),
        *declared,
    }
    prefixes = (
        f"{settings.streams_app_id}-",
        f"{settings.jobs_topic_prefix}jobs.",
        f"{settings.streams_jobs_topic_prefix}jobs.",
        settings.webhooks_dlq_prefix,
    )
    return sorted(
        n
        for n in names
        if not is_kafka_internal(n) and (n in named or any(n.startswith(p) for p in prefixes))
    )


def is_keel_group(settings: KeelSettings, group: str) -> bool:
    fixed = {
        settings.streams_app_id,
        settings.webhooks_group,
        settings.pgsink_group,
        settings.archive_group,
    }
    return group in fixed or group.startswith(f"{settings.jobs_topic_prefix}keel.jobs.")


# -- the checks ------------------------------------------------------------------------


def cluster_checks(
    admin: AdminClient, timeout: float
) -> tuple[list[Check], ClusterDurability | None]:
    """Brokers, controller and the brokers' settings, and what the brokers give a new topic
    (None when a broker or the controller fails: the rest cannot be judged); KafkaEdgeError
    when no broker answers."""
    with kafka_call("describing the cluster", timeout):
        described = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout)
    checks = []
    for node in sorted(described.nodes, key=lambda n: n.id):
        resource = ConfigResource(ResourceType.BROKER, str(node.id))
        try:
            with kafka_call(f"asking broker {node.id}", timeout):
                [future] = admin.describe_configs([resource], request_timeout=timeout).values()
                future.result(timeout=timeout)
            checks.append(Check(f"broker {node.id}", True, f"{node.host}:{node.port} answers"))
        except KafkaEdgeError as exc:
            checks.append(Check(f"broker {node.id}", False, f"{node.host}:{node.port}: {exc}"))
    controller = described.controller
    checks.append(
        Check("controller", True, f"the brokers name node {controller.id}")
        if controller is not None
        else Check("controller", False, "the brokers name no controller (no quorum?)")
    )
    if not all(c.ok for c in checks):
        return checks, None
    cluster = cluster_durability(admin, timeout)
    copies = "no copy survives a broker's loss (development only)" if cluster.brokers == 1 else ""
    checks.append(
        Check(
            "new topics",
            True,
            f"{cluster.brokers} broker(s), default.replication.factor "
            f"{cluster.default_replication}, min.insync.replicas {cluster.min_insync_replicas}"
            + (f": {copies}" if copies else ""),
        )
    )
    checks.append(
        Check(
            "unclean leader election",
            not cluster.unclean_leader_election,
            "off"
            if not cluster.unclean_leader_election
            else "ON: a replica that missed acknowledged writes may become leader and lose them"
            " (set unclean.leader.election.enable=false)",
        )
    )
    checks.append(
        Check(
            "topic auto-creation",
            not cluster.auto_create_topics,
            "off"
            if not cluster.auto_create_topics
            else "ON: a mistyped topic name creates a topic with the brokers' defaults "
            "(set auto.create.topics.enable=false)",
        )
    )
    return checks, cluster


def topic_checks(
    admin: AdminClient, names: Sequence[str], cluster: ClusterDurability, timeout: float
) -> list[Check]:
    """Replication and min.insync.replicas of each topic, and its partitions in sync now."""
    with kafka_call("listing topics", timeout):
        metadata = admin.list_topics(timeout=timeout)
    configs: dict[str, dict[str, str | None]] = {}
    for resource, future in admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, n) for n in names], request_timeout=timeout
    ).items():
        with kafka_call(f"reading the configs of {resource.name}", timeout):
            configs[resource.name] = {k: e.value for k, e in future.result(timeout).items()}
    checks = []
    for name in names:
        meta = metadata.topics[name]
        replication = max(len(p.replicas) for p in meta.partitions.values())
        config = configs[name]
        min_isr = int(config.get("min.insync.replicas") or cluster.min_insync_replicas)
        problems = durability_problems(replication, min_isr, cluster)
        if str(config.get("unclean.leader.election.enable")).lower() == "true":
            problems.append("unclean.leader.election.enable is true on this topic")
        behind = sorted(p.id for p in meta.partitions.values() if len(p.isrs) < len(p.replicas))
        if behind:
            problems.append(f"partition(s) {behind} have replicas out of sync now")
        detail = f"replication {replication}, min.insync.replicas {min_isr}"
        if problems:
            remedy = fix(name, replication, min_isr, cluster)
            detail += ": " + "; ".join(problems) + (f"; fix: {remedy}" if remedy else "")
        checks.append(Check(f"topic {name}", not problems, detail))
    return checks


def group_checks(admin: AdminClient, settings: KeelSettings, timeout: float) -> list[Check]:
    """Each Keel consumer group the brokers know: members consuming (Stable), or why not."""
    groups = [
        g
        for g in list_groups(admin, timeout)
        if is_keel_group(settings, g) and not g.endswith(_REPLAY_MARK)
    ]
    if not groups:
        return [Check("consumer groups", True, "no Keel consumer group yet")]
    checks = []
    with kafka_call("describing consumer groups", timeout):
        described = admin.describe_consumer_groups(groups, request_timeout=timeout)
        for group, future in sorted(described.items()):
            description = future.result(timeout=timeout)
            state = description.state.name.lower()
            members = len(description.members)
            if state == "stable":
                checks.append(Check(f"group {group}", True, f"stable, {members} member(s)"))
            elif state in ("empty", "dead"):
                checks.append(
                    Check(f"group {group}", False, f"{state}: no member consumes (is it running?)")
                )
            else:
                checks.append(
                    Check(f"group {group}", True, f"{state} (rebalancing), {members} member(s)")
                )
    return checks


def component_checks(settings: KeelSettings) -> list[Check]:
    """What components add through the `keel.doctor` entry point; one that fails to run is a
    failed check naming it, not a crash."""
    checks: list[Check] = []
    for entry in entry_points(group="keel.doctor"):
        try:
            source: CheckSource = entry.load()
            checks.extend(source(settings))
        except KeelError as exc:
            checks.append(Check(entry.name, False, str(exc)))
    return checks


def run_checks(
    admin: AdminClient,
    settings: KeelSettings,
    declared: Iterable[str] = (),
    timeout: float = 15.0,
) -> list[Check]:
    """Every check, in the order an operator reads them; an unreachable cluster is one failed
    check (the others need it), the registry's checks still run."""
    try:
        checks, cluster = cluster_checks(admin, timeout)
        if cluster is not None:
            with kafka_call("listing topics", timeout):
                names = admin.list_topics(timeout=timeout).topics
            keel = keel_topics(settings, names, declared)
            if not keel:
                checks.append(Check("topics", False, "no Keel topic here (is Keel deployed?)"))
            present = [n for n in (*keel, OFFSETS_TOPIC) if n in names]
            checks += topic_checks(admin, present, cluster, timeout)
            if OFFSETS_TOPIC not in names:
                checks.append(Check(f"topic {OFFSETS_TOPIC}", True, "not created yet (no group)"))
            checks += group_checks(admin, settings, timeout)
    except KafkaEdgeError as exc:
        checks = [Check("brokers", False, f"{settings.bootstrap_servers}: {exc}")]
    return checks + component_checks(settings)
