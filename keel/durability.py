"""Durability of topics: what the cluster gives a new topic, and what a topic's replication
and `min.insync.replicas` promise. Pure: `keel.kafka` reads the figures from the brokers,
`keel topics plan` and `keel doctor` judge them here, by the same rules.

The rules (README, Durability): on a cluster of more than one broker a Keel topic keeps at
least the cluster's `default.replication.factor` copies, never a single one, and a write
acknowledged with `acks=all` survives one broker's loss (`min.insync.replicas` at least 2
when there are three copies) while one broker down does not stop writes (`min.insync.replicas`
below the replication factor).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterDurability:
    """What the brokers give a topic created without a replication or min ISR of its own."""

    brokers: int
    default_replication: int  # default.replication.factor
    min_insync_replicas: int  # the brokers' min.insync.replicas
    unclean_leader_election: bool
    auto_create_topics: bool


def durability_problems(
    replication: int, min_insync: int | None, cluster: ClusterDurability
) -> list[str]:
    """Why a topic with this replication factor and effective `min.insync.replicas` does not
    keep Keel's promises on `cluster`; empty when it does. A one-broker cluster (development)
    has nothing to replicate to, so one copy is all it can promise."""
    problems = []
    if cluster.brokers > 1 and replication == 1:
        problems.append(
            f"a single replica on a {cluster.brokers}-broker cluster: that broker's disk lost "
            "means acknowledged events lost, that broker down means the topic refuses writes"
        )
    elif replication < min(cluster.default_replication, cluster.brokers):
        problems.append(
            f"replication {replication} is below the cluster's default.replication.factor "
            f"{cluster.default_replication}"
        )
    if min_insync is not None and replication > 1:
        if min_insync >= replication:
            problems.append(
                f"min.insync.replicas {min_insync} is not below replication {replication}: "
                "writes stop while one replica is down"
            )
        elif replication >= 3 and min_insync < 2:
            problems.append(
                f"min.insync.replicas {min_insync} with {replication} replicas: an "
                "acknowledged write may live on one broker only"
            )
    return problems


def fix(topic: str, replication: int, min_insync: int | None, cluster: ClusterDurability) -> str:
    """How to make a topic keep the promises, said as the changes to make ("" when none).
    Replication grows by reassigning partitions to more brokers (Kafka's own tool, or the
    provider's console); `min.insync.replicas` is a topic config that `keel topics apply`
    sets from topics.toml."""
    target = max(replication, cluster.default_replication, min(3, cluster.brokers))
    steps = []
    if target > replication:
        steps.append(
            f"raise {topic}'s replication to {target} by reassigning its partitions "
            "(kafka-reassign-partitions.sh --generate, add replicas, --execute)"
        )
    wanted_isr = min(2, target - 1)
    if target > 1 and (min_insync is None or not wanted_isr <= min_insync < target):
        steps.append(
            f'declare "min.insync.replicas" = {wanted_isr} for {topic} in topics.toml and run '
            "`keel topics apply`"
        )
    return "; then ".join(steps)
