"""Topics as code without a broker: the file's validation (each problem names the topic and
the field) and the plan, a pure function of the declared topics and an observed cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.consumers.job import JobTopics
from keel.durability import ClusterDurability
from keel.kafka import TopicSpec
from keel.schemas.catalog import load_catalog
from keel.settings import KeelSettings
from keel.topics import (
    ClusterState,
    ConfigChange,
    ObservedTopic,
    PartitionChange,
    ReplicationChange,
    TopicsFileError,
    compute_plan,
    load_topics,
    parse_topics,
)

REPO_FILE = Path(__file__).resolve().parents[2] / "topics.toml"


def _default(name: str) -> object:
    return KeelSettings.model_fields[name].default


# -- the repository's file -------------------------------------------------------------


def test_the_repository_file_declares_keels_fixed_topics() -> None:
    specs = {s.name: s for s in load_topics(REPO_FILE).specs()}
    source = str(_default("streams_source_topic"))
    assert specs[source].partitions == _default("streams_source_partitions")
    assert specs[str(_default("streams_dlq_topic"))].partitions == specs[source].partitions
    assert specs[str(_default("registry_topic"))].config["cleanup.policy"] == "compact"
    catalog = load_catalog()
    jobs = {catalog.get(t).topic for t in catalog.types() if t.startswith("job.")}
    assert jobs == {"jobs.email", "jobs.report"}
    for name in ("email", "report", "report_ready"):
        topics = JobTopics.for_job(name, prefix=str(_default("jobs_topic_prefix")))
        assert {topics.retry, topics.dlq} <= specs.keys()
    assert jobs <= specs.keys()
    # Per-app Faust internals are the workers' own, not the file's.
    assert not [n for n in specs if n.startswith(str(_default("streams_app_id")))]


# -- validation ------------------------------------------------------------------------


def _error(text: str) -> str:
    with pytest.raises(TopicsFileError) as caught:
        parse_topics(text, "t.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("t.toml: ")
    return message


def test_a_valid_file_fills_in_defaults_and_renders_values_as_kafka_does() -> None:
    parsed = parse_topics(
        """
        [defaults]
        replication_factor = 3
        config = { "min.insync.replicas" = 2, "unclean.leader.election.enable" = false }

        [[topics]]
        name = "orders"
        partitions = 12
        [topics.config]
        "retention.ms" = 86400000
        "min.insync.replicas" = "1"
        "min.cleanable.dirty.ratio" = 0.25

        [[topics]]
        name = "audit"
        partitions = 1
        replication_factor = 2
        """
    )
    orders, audit = parsed.specs()
    assert orders == TopicSpec(
        "orders",
        12,
        3,
        {
            "min.insync.replicas": "1",  # the topic's own value wins over the default
            "unclean.leader.election.enable": "false",
            "retention.ms": "86400000",
            "min.cleanable.dirty.ratio": "0.25",
        },
    )
    assert audit.replication_factor == 2
    assert audit.config == {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}


def test_replication_factor_left_out_is_the_brokers_default() -> None:
    [spec] = parse_topics('[[topics]]\nname = "a"\npartitions = 1').specs()
    assert spec.replication_factor == -1


def test_an_unknown_key_names_the_topic_and_the_key() -> None:
    message = _error('[[topics]]\nname = "orders"\npartitions = 1\nretention = 5')
    assert "topic 'orders' (topics[0]): retention: unknown key" in message
    assert "allowed: name, partitions, replication_factor, config" in message


def test_an_unknown_top_level_key_is_named() -> None:
    # `[[topic]]` for `[[topics]]`: the typo and the missing table are both said.
    message = _error('[[topic]]\nname = "orders"\npartitions = 1')
    assert "topic: unknown key (allowed: defaults, topics)" in message
    assert "topics: required" in message


def test_a_bad_type_names_the_topic_the_field_and_the_value() -> None:
    message = _error('[[topics]]\nname = "orders"\npartitions = "3"')
    assert message == "t.toml: topic 'orders' (topics[0]): partitions: must be an integer (got '3')"


def test_a_boolean_is_not_a_partition_count() -> None:
    assert "partitions: must be an integer" in _error('[[topics]]\nname = "a"\npartitions = true')


@pytest.mark.parametrize("value", [0, -2])
def test_partitions_below_one_are_rejected(value: int) -> None:
    message = _error(f'[[topics]]\nname = "orders"\npartitions = {value}')
    assert message == f"t.toml: topic 'orders' (topics[0]): partitions: must be >= 1 (got {value})"


def test_replication_factor_below_one_is_rejected() -> None:
    message = _error('[[topics]]\nname = "o"\npartitions = 1\nreplication_factor = 0')
    assert "topic 'o' (topics[0]): replication_factor: must be >= 1 (got 0)" in message


def test_a_duplicate_name_names_both_places() -> None:
    text = '[[topics]]\nname = "a"\npartitions = 1\n[[topics]]\nname = "b"\npartitions = 1\n'
    message = _error(text + '[[topics]]\nname = "a"\npartitions = 2')
    assert message == "t.toml: topic 'a' (topics[2]): name: declared twice (first at topics[0])"


def test_an_unquoted_dotted_config_key_says_to_quote_it() -> None:
    message = _error('[[topics]]\nname = "a"\npartitions = 1\n[topics.config]\nretention.ms = 5')
    assert "topic 'a' (topics[0]): config: 'retention' is a table" in message
    assert 'quote dotted keys ("retention.ms" = …)' in message


def test_a_config_value_must_be_a_scalar() -> None:
    message = _error('[[topics]]\nname = "a"\npartitions = 1\nconfig = { "x.y" = [1] }')
    assert "topic 'a' (topics[0]): config: 'x.y' must be a string, number or boolean" in message


def test_a_config_name_must_look_like_kafkas() -> None:
    message = _error('[[topics]]\nname = "a"\npartitions = 1\nconfig = { "Retention.MS" = 1 }')
    assert "config: 'Retention.MS' is not a Kafka config name" in message


@pytest.mark.parametrize("name", ["has space", "", "..", "x" * 250, "a/b"])
def test_a_topic_name_kafka_would_refuse_is_rejected(name: str) -> None:
    message = _error(f'[[topics]]\nname = "{name}"\npartitions = 1')
    assert "): name: must be 1-249 characters" in message


def test_a_missing_name_points_at_the_entry() -> None:
    message = _error('[[topics]]\nname = "a"\npartitions = 1\n[[topics]]\npartitions = 1')
    assert message == "t.toml: topics[1]: name: required"


def test_not_toml_says_where() -> None:
    message = _error('[[topics]]\nname = "a\npartitions = 1')
    assert message.startswith("t.toml: not valid TOML: ")
    assert "line 2" in message


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TopicsFileError, match=r"nope\.toml: no such file$"):
        load_topics(tmp_path / "nope.toml")


# -- the plan --------------------------------------------------------------------------


def _cluster(
    *topics: ObservedTopic,
    others: tuple[str, ...] = (),
    durability: ClusterDurability | None = None,
) -> ClusterState:
    return ClusterState(
        frozenset([t.name for t in topics] + list(others)), {t.name: t for t in topics}, durability
    )


def test_missing_topics_are_created_as_declared() -> None:
    declared = [TopicSpec("a", 3, -1, {"retention.ms": "1000"}), TopicSpec("b", 1)]
    plan = compute_plan(declared, _cluster())
    assert plan.creates == tuple(declared)
    assert plan.pending and plan.changes == 2
    assert plan.lines() == [
        "+ a  create: partitions 3  replication default  retention.ms=1000",
        "+ b  create: partitions 1  replication default",
    ]


def test_a_matching_cluster_gives_an_empty_plan() -> None:
    declared = [TopicSpec("a", 3, 1, {"cleanup.policy": "compact"})]
    seen = ObservedTopic("a", 3, 1, {"cleanup.policy": "compact", "retention.ms": "604800000"})
    plan = compute_plan(declared, _cluster(seen))
    assert not plan.pending
    assert plan.lines() == []
    assert plan.summary().startswith("no changes:")


def test_more_partitions_are_added() -> None:
    plan = compute_plan([TopicSpec("a", 6)], _cluster(ObservedTopic("a", 3, 1)))
    assert plan.partitions == (PartitionChange("a", 3, 6),)
    assert not plan.refusals
    assert plan.lines()[0].startswith("~ a  partitions 3 -> 6")


def test_fewer_partitions_are_refused() -> None:
    plan = compute_plan([TopicSpec("a", 2)], _cluster(ObservedTopic("a", 3, 1)))
    assert not plan.changes
    [refusal] = plan.refusals
    assert refusal.topic == "a"
    assert "partitions 3 -> 2: Kafka cannot remove partitions" in refusal.reason
    assert plan.pending


def test_another_replication_factor_is_said_how_and_an_undeclared_one_is_not_compared() -> None:
    observed = _cluster(ObservedTopic("a", 3, 1), ObservedTopic("b", 3, 1))
    plan = compute_plan([TopicSpec("a", 3, 3), TopicSpec("b", 3, -1)], observed)
    # Kafka changes it by reassignment, which apply does not do: pending, said how, and not a
    # refusal (the other changes of the plan still apply).
    assert plan.replication == (ReplicationChange("a", 1, 3),)
    assert not plan.refusals and plan.pending
    assert plan.lines() == [
        "! a  replication 1 -> 3: raise it by reassigning the partitions "
        "(kafka-reassign-partitions.sh --generate, give each partition 3 replicas, --execute); "
        "apply does not"
    ]


THREE = ClusterDurability(3, 3, 2, unclean_leader_election=False, auto_create_topics=False)


def test_each_managed_topic_shows_replication_and_min_isr_beside_the_files() -> None:
    observed = _cluster(
        ObservedTopic("good", 3, 3, {"min.insync.replicas": "2"}),
        ObservedTopic("single", 3, 1, {"min.insync.replicas": "2"}),
        ObservedTopic("isr", 1, 3, {"min.insync.replicas": "2"}),
        durability=THREE,
    )
    declared = [
        TopicSpec("good", 3),
        TopicSpec("single", 3),
        TopicSpec("isr", 1, 3, {"min.insync.replicas": "3"}),
    ]
    plan = compute_plan(declared, observed)
    lines = plan.lines()
    assert lines[0] == (
        "  good  replication 3 (file: default 3)  min.insync.replicas 2 (file: default 2)"
    )
    assert lines[1].startswith(
        "! single  replication 1 (file: default 3)  min.insync.replicas 2 (file: default 2): "
        "a single replica on a 3-broker cluster"
    )
    assert "fix: raise single's replication to 3 by reassigning its partitions" in lines[1]
    # judged as apply leaves it: the file's min.insync.replicas 3 is what the topic will have
    assert lines[2].startswith(
        "! isr  replication 3 (file: 3)  min.insync.replicas 3 (file: 3): "
        "min.insync.replicas 3 is not below replication 3"
    )
    assert 'fix: declare "min.insync.replicas" = 2 for isr' in lines[2]
    assert [d.topic for d in plan.at_risk] == ["single", "isr"]
    assert plan.pending and "2 topic(s) at risk (!)" in plan.summary()
    [_, single, _] = plan.to_dict()["durability"]
    assert single["replication_factor"] == 1 and single["declared_replication_factor"] is None
    assert single["problems"][0].startswith("a single replica")


def test_a_durable_matching_cluster_is_not_pending() -> None:
    observed = _cluster(ObservedTopic("a", 3, 3, {"min.insync.replicas": "2"}), durability=THREE)
    plan = compute_plan([TopicSpec("a", 3)], observed)
    assert not plan.pending and not plan.at_risk


def test_only_declared_config_keys_change_old_to_new() -> None:
    seen = ObservedTopic(
        "a", 1, 1, {"retention.ms": "604800000", "cleanup.policy": "delete", "segment.ms": "9"}
    )
    declared = [TopicSpec("a", 1, -1, {"retention.ms": "3600000", "cleanup.policy": "delete"})]
    plan = compute_plan(declared, _cluster(seen))
    assert plan.configs == (ConfigChange("a", "retention.ms", "604800000", "3600000"),)
    assert plan.lines() == ["~ a  retention.ms: 604800000 -> 3600000"]


def test_a_config_the_cluster_does_not_know_shows_none_as_old() -> None:
    plan = compute_plan([TopicSpec("a", 1, -1, {"x.y": "1"})], _cluster(ObservedTopic("a", 1, 1)))
    assert plan.configs == (ConfigChange("a", "x.y", None, "1"),)
    assert plan.lines() == ["~ a  x.y: (none) -> 1"]


def test_undeclared_topics_are_unmanaged_and_kafkas_own_are_left_out() -> None:
    observed = _cluster(
        ObservedTopic("a", 1, 1),
        others=("keel-streams-dedup-changelog", "__consumer_offsets", "legacy"),
    )
    plan = compute_plan([TopicSpec("a", 1)], observed)
    assert plan.unmanaged == ("keel-streams-dedup-changelog", "legacy")
    assert not plan.pending  # unmanaged topics are not drift


def test_the_json_form_carries_every_item() -> None:
    observed = _cluster(ObservedTopic("b", 2, 1, {"retention.ms": "1"}), ObservedTopic("c", 4, 1))
    declared = [
        TopicSpec("a", 1, 3, {"cleanup.policy": "compact"}),
        TopicSpec("b", 3, -1, {"retention.ms": "2"}),
        TopicSpec("c", 2),
    ]
    plan = compute_plan(declared, observed).to_dict()
    assert plan["pending"] is True
    assert plan["changes"] == [
        {
            "action": "create",
            "topic": "a",
            "partitions": 1,
            "replication_factor": 3,
            "config": {"cleanup.policy": "compact"},
        },
        {"action": "partitions", "topic": "b", "from": 2, "to": 3},
        {"action": "config", "topic": "b", "key": "retention.ms", "from": "1", "to": "2"},
    ]
    assert [r["topic"] for r in plan["refused"]] == ["c"]
    assert plan["unmanaged"] == []
