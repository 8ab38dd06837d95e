"""The lag exporter (`keel lag --serve PORT`) against the real broker: Prometheus scrapes lag
in messages and seconds per group and partition for every group on the cluster, and every
topic's offsets; the figures follow the group's commits; health in the one JSON shape."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from keel.lag_exporter import METRICS
from keel.local.ports import free_port
from tests.keel.test_lag import _commit, _fill
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(exporter: KeelProcess) -> Samples:
    body = exporter.text("/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def exporter(kafka_bootstrap: str, tmp_path: Path) -> Iterator[KeelProcess]:
    port = free_port()
    env = {**os.environ, "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap}
    process = KeelProcess.start(
        [KEEL, "lag", "--serve", str(port), "--interval", "1"],
        env,
        tmp_path / "exporter.log",
        port=port,
        name="lag exporter",
    )
    try:
        wait_for(process.ready, 60, "the exporter's first read")
        yield process
    finally:
        process.stop_and_show()


def test_every_group_is_exported_in_messages_and_seconds(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    group_id: str,
    exporter: KeelProcess,
) -> None:
    topic = new_topic("lagexp", 2)
    _fill(kafka_bootstrap, topic, {0: 5, 1: 3}, written=time.time() - 300)
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 3)])
    p0 = {"group": group_id, "topic": topic, "partition": "0"}
    p1 = {"group": group_id, "topic": topic, "partition": "1"}

    def exported() -> Samples | None:
        found = scrape(exporter)
        return found if sample(found, "keel_consumer_group_lag_messages", **p0) == 3 else None

    found = wait_for(exported, 30, f"{group_id} exported")
    assert sample(found, "keel_consumer_group_lag_messages", **p1) == 0
    age = sample(found, "keel_consumer_group_lag_seconds", **p0)
    assert age is not None and 300 <= age < 360, age
    assert sample(found, "keel_consumer_group_lag_seconds", **p1) == 0
    assert sample(found, "keel_consumer_group_members", group=group_id) == 0
    assert sample(found, "keel_topic_partition_end_offset", topic=topic, partition="0") == 5
    assert sample(found, "keel_topic_partition_start_offset", topic=topic, partition="0") == 0
    assert (sample(found, "keel_lag_exporter_last_read_timestamp_seconds") or 0) > time.time() - 60
    # Only the names the rules and dashboards are checked against (keel.lag_exporter.METRICS).
    names = {name.removesuffix("_total") for name, _ in found} - {
        "keel_lag_exporter_read_errors_created"
    }
    assert names <= {m.removesuffix("_total") for m in METRICS}, names

    # The group catches up: the figures follow on the next read.
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 5)])

    def caught_up() -> bool:
        found = scrape(exporter)
        return (
            sample(found, "keel_consumer_group_lag_messages", **p0) == 0
            and sample(found, "keel_consumer_group_lag_seconds", **p0) == 0
        )

    wait_for(caught_up, 30, f"{group_id} caught up in the exporter")


def test_health_answers_in_the_one_shape_and_sigterm_stops_it(exporter: KeelProcess) -> None:
    for path in ("/healthz", "/readyz"):
        status, body = exporter.get(path)
        assert status == 200, body
        state = json.loads(body)
        assert state["status"] == "ok" and all(c["ok"] for c in state["checks"].values()), state
    assert exporter.get("/nowhere")[0] == 404
    assert exporter.stop_gracefully() == 0


def test_a_taken_port_is_one_line_and_exit_1(kafka_bootstrap: str, exporter: KeelProcess) -> None:
    env = {**os.environ, "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap}
    from tests.processes import run_keel

    result = run_keel("lag", "--serve", str(exporter.port), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"keel: error: lag exporter port {exporter.port}: Address already in use"
    )


def test_the_local_stack_and_compose_run_the_same_exporter(tmp_path: Path) -> None:
    import yaml

    from keel.local.monitoring import lag_exporter
    from keel.settings import KeelSettings
    from tests.keel.test_compose import COMPOSE

    stacked = lag_exporter(KeelSettings(home=tmp_path))
    composed = yaml.safe_load(COMPOSE.read_text())["services"]["lag-exporter"]
    assert stacked.argv[stacked.argv.index("keel.cli") + 1 :] == composed["command"]
    assert f":{stacked.port}/readyz" in " ".join(composed["healthcheck"]["test"])
    from keel.local.stack import stack_services

    names = [s.name for s in stack_services(KeelSettings(home=tmp_path))]
    assert "lag-exporter" in names and names.index("lag-exporter") > names.index("kafka")
