"""The durability rules `keel topics plan` and `keel doctor` judge topics by, and how a topic
Keel creates gets its replication (keel.kafka.TopicSpec.for_cluster)."""

from __future__ import annotations

import pytest

from keel.durability import ClusterDurability, durability_problems, fix
from keel.kafka import TopicSpec
from keel.settings import KeelSettings

pytestmark = pytest.mark.unit


def _cluster(brokers: int, default_rf: int, min_isr: int) -> ClusterDurability:
    return ClusterDurability(brokers, default_rf, min_isr, False, False)


THREE = _cluster(3, 3, 2)


def test_three_replicas_two_in_sync_keep_every_promise() -> None:
    assert durability_problems(3, 2, THREE) == []


def test_one_replica_on_a_multi_broker_cluster_is_flagged() -> None:
    [problem] = durability_problems(1, 1, THREE)
    assert problem.startswith("a single replica on a 3-broker cluster")
    # even where the operator's cluster default is 1 itself
    assert durability_problems(1, 1, _cluster(3, 1, 1))[0].startswith("a single replica")


def test_replication_below_the_clusters_default_is_flagged() -> None:
    assert durability_problems(2, 1, _cluster(5, 3, 2)) == [
        "replication 2 is below the cluster's default.replication.factor 3"
    ]


def test_min_isr_not_below_replication_is_flagged() -> None:
    [problem] = durability_problems(3, 3, THREE)
    assert problem == (
        "min.insync.replicas 3 is not below replication 3: writes stop while one replica is down"
    )
    assert durability_problems(2, 2, _cluster(2, 2, 2))[0].startswith("min.insync.replicas 2")


def test_three_replicas_with_one_in_sync_are_flagged() -> None:
    [problem] = durability_problems(3, 1, THREE)
    assert "an acknowledged write may live on one broker only" in problem


def test_a_one_broker_cluster_promises_one_copy_and_that_is_no_problem() -> None:
    assert durability_problems(1, 1, _cluster(1, 1, 1)) == []


def test_the_fix_says_reassign_for_replication_and_apply_for_min_isr() -> None:
    assert fix("t", 1, 2, THREE) == (
        "raise t's replication to 3 by reassigning its partitions "
        "(kafka-reassign-partitions.sh --generate, add replicas, --execute)"
    )
    assert fix("t", 3, 3, THREE) == (
        'declare "min.insync.replicas" = 2 for t in topics.toml and run `keel topics apply`'
    )
    assert fix("t", 3, 2, THREE) == ""


def test_a_topic_left_open_takes_the_brokers_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REPLICATION_FACTOR", "STREAMS_REPLICATION_FACTOR", "MIN_INSYNC_REPLICAS"):
        monkeypatch.delenv(f"KEEL_{name}", raising=False)
    spec = TopicSpec("t", 3).for_cluster(KeelSettings())
    assert spec.replication_factor == -1  # the brokers' default.replication.factor (KIP-464)
    assert "min.insync.replicas" not in spec.config  # the brokers' value


def test_the_operators_settings_fill_what_a_topic_leaves_open() -> None:
    settings = KeelSettings(replication_factor=3, min_insync_replicas=2)
    assert TopicSpec("t", 3).for_cluster(settings) == TopicSpec(
        "t", 3, 3, {"min.insync.replicas": "2"}
    )
    # a topic that names its own keeps them
    own = TopicSpec("t", 1, 1, {"min.insync.replicas": "1"})
    assert own.for_cluster(settings) == own


def test_the_old_streams_setting_still_counts_and_nothing_defaults_to_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEEL_REPLICATION_FACTOR", raising=False)
    monkeypatch.delenv("KEEL_STREAMS_REPLICATION_FACTOR", raising=False)
    assert KeelSettings().replication_factor is None
    monkeypatch.setenv("KEEL_STREAMS_REPLICATION_FACTOR", "2")
    assert KeelSettings().replication_factor == 2
    monkeypatch.setenv("KEEL_REPLICATION_FACTOR", "3")
    assert KeelSettings().replication_factor == 3


def test_keel_topics_are_the_files_the_settings_and_the_apps_own() -> None:
    from keel.doctor import keel_topics

    settings = KeelSettings(streams_app_id="keel-streams", jobs_topic_prefix="")
    names = [
        "events",
        "events.dlq",
        "_schemas",
        "keel-streams-dedup-changelog",
        "keel-streams-__assignor-__leader",
        "jobs.email.retry",
        "webhooks.dlq.shop",
        "pgsink.dlq",
        "declared.elsewhere",
        "someone-elses",
        "__consumer_offsets",
    ]
    assert keel_topics(settings, names, ["declared.elsewhere"]) == sorted(
        set(names) - {"someone-elses", "__consumer_offsets"}
    )


def test_keel_groups_are_the_services_and_the_job_workers() -> None:
    from keel.doctor import is_keel_group

    settings = KeelSettings(streams_app_id="keel-streams", jobs_topic_prefix="")
    assert is_keel_group(settings, "keel-streams")
    assert is_keel_group(settings, "keel.jobs.email")
    assert is_keel_group(settings, "keel-pgsink")
    assert not is_keel_group(settings, "someone-elses")
