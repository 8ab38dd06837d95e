"""`keel scale NAME N`: replicas of a consumer group of the local stack, each its own process
in the group on its own port, listed by the stack (status, down, Prometheus), never more
than the partitions of what the group reads."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from keel.kafka import TopicSpec, ensure_topics, wait_for_topics
from keel.local.ports import free_base_port, free_port
from keel.local.scaling import (
    Scalable,
    ScaleError,
    _record_count,
    check_count,
    declared,
    find,
    recorded_counts,
)
from keel.local.services import ProcessService
from keel.local.stack import stack_services
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import http_get, run_keel


def _by_name(settings: KeelSettings) -> dict[str, Scalable]:
    return {s.name: s for s in declared(settings)}


@pytest.mark.unit
def test_every_stream_worker_job_type_and_sink_is_scalable(tmp_path: Path) -> None:
    (tmp_path / "webhooks.toml").write_text("")  # so the webhook sink is part of the stack
    found = _by_name(KeelSettings(home=tmp_path))
    assert set(found) == {
        "streams", "jobs-email", "jobs-report", "jobs-report-ready", "pgsink", "archive-sink",
        "webhook-sink",
    }  # fmt: skip
    assert (found["streams"].group, found["streams"].topics) == ("keel-streams", ("events",))
    assert (found["jobs-email"].group, found["jobs-email"].topics) == (
        "keel.jobs.email",
        ("jobs.email",),
    )
    assert found["jobs-report-ready"].topics == ("events",)
    assert (found["pgsink"].group, found["pgsink"].topics) == ("keel-pgsink", ("events",))
    # A job type's bare name works too.
    assert find(list(found.values()), "report_ready") is found["jobs-report-ready"]


@pytest.mark.unit
def test_replicas_have_their_own_names_and_ports_and_the_first_is_the_stacks(
    tmp_path: Path,
) -> None:
    (tmp_path / "webhooks.toml").write_text("")
    settings = KeelSettings(home=tmp_path)
    stack = {s.name: s for s in stack_services(settings)}
    found = _by_name(settings)
    # Replica 1 is the service `keel up` runs: the job types share the all-types worker.
    for name in ("jobs-email", "jobs-report", "jobs-report-ready"):
        assert found[name].replica(1).name == "jobs-worker"
    assert found["pgsink"].replica(1).name == "pgsink"
    assert found["streams"].replica(1).name == "streams-1"
    # Replicas 2..6 of every group together: a port each, none a port of the stack.
    extra = [s.replica(i) for s in found.values() for i in range(2, 7)]
    ports = [r.port for r in extra]
    assert len(set(ports)) == len(ports)
    taken = {s.port for s in stack.values() if isinstance(s, ProcessService)}
    taken.update(range(settings.broker_port, settings.broker_port + 2))
    assert not set(ports) & taken - {r.port for r in extra if r.name in stack}
    assert len({r.name for r in extra}) == len(extra)
    email_2 = found["jobs-email"].replica(2)
    assert email_2.argv[-4:] == ["worker", "email", "--http-port", str(email_2.port)]


@pytest.mark.unit
def test_the_stack_lists_the_recorded_count_each_replica_once(tmp_path: Path) -> None:
    settings = KeelSettings(home=tmp_path, streams_workers=2)

    def names() -> list[str]:
        return [s.name for s in stack_services(settings)]

    assert [n for n in names() if n.startswith("streams-")] == ["streams-1", "streams-2"]
    found = _by_name(settings)
    _record_count(settings, found["streams"], 3)
    _record_count(settings, found["jobs-email"], 2)
    assert recorded_counts(settings) == {"streams": 3, "jobs-email": 2}
    listed = names()
    assert [n for n in listed if n.startswith("streams-")] == [
        "streams-1",
        "streams-2",
        "streams-3",
    ]
    assert listed.count("jobs-worker") == 1 and "jobs-email-2" in listed
    _record_count(settings, found["streams"], 1)  # below the default: one worker listed
    assert [n for n in names() if n.startswith("streams-")] == ["streams-1"]
    _record_count(settings, found["streams"], 2)  # back at the default: nothing recorded
    assert recorded_counts(settings) == {"jobs-email": 2}


@pytest.mark.unit
def test_a_count_past_the_partitions_is_refused_naming_the_topic(tmp_path: Path) -> None:
    streams = _by_name(KeelSettings(home=tmp_path))["streams"]
    check_count(streams, 6, {"events": 6})
    with pytest.raises(ScaleError) as refused:
        check_count(streams, 7, {"events": 6})
    assert "events (6 partitions)" in str(refused.value)
    assert "at most 6 consumers of group keel-streams" in str(refused.value)
    with pytest.raises(ScaleError, match="at least 1"):
        check_count(streams, 0, {"events": 6})
    with pytest.raises(ScaleError, match=r"known: archive-sink, jobs-email, .*, streams$"):
        find(declared(KeelSettings(home=tmp_path)), "stream")


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _members(admin: Any, group: str) -> int:
    [future] = admin.describe_consumer_groups([group], request_timeout=10).values()
    return len(future.result().members)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_keel_scale_streams_runs_replicas_in_the_group_and_refuses_past_the_partitions(
    kafka_bootstrap: str, schema_registry: str, redis_url: str, admin: Any, tmp_path: Path
) -> None:
    prefix = f"test-scale-{uuid.uuid4().hex[:8]}."
    events = f"{prefix}events"
    ensure_topics(admin, [TopicSpec(events, 3)])
    wait_for_topics(admin, [events])
    group = f"{prefix}streams"
    base = next(b for _ in range(50) if _ports_free(b := free_base_port(), b + 1, b + 2))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "KEEL_HOME": str(home),
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_STREAMS_APP_ID": group,
        "KEEL_STREAMS_SOURCE_TOPIC": events,
        "KEEL_STREAMS_DLQ_TOPIC": f"{prefix}events.dlq",
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": prefix,
        "KEEL_STREAMS_CACHE_ENABLED": "false",
        "KEEL_STREAMS_WEB_PORT": str(base),
        "KEEL_STREAMS_SESSION_TIMEOUT_S": "10",
        "KEEL_PROMETHEUS_PORT": "0",
    }

    def keel(*args: str) -> Any:
        return run_keel(*args, env=env, timeout=400)

    def listed() -> dict[str, dict[str, Any]]:
        found = json.loads(keel("status", "--json").stdout)
        return {st["name"]: st for st in found if st["name"].startswith("streams-")}

    try:
        # Past the partitions: one line naming the topic, non-zero, nothing started.
        refused = keel("scale", "streams", "4")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"keel: error: cannot run 4 replicas of streams: it reads {events} (3 partitions), "
            f"so at most 3 consumers of group {group} get a partition"
        ]
        assert not list(home.glob("run/*"))

        up = keel("scale", "streams", "3")
        assert up.returncode == 0, up.stderr
        wait_for(lambda: _members(admin, group) == 3, 120, "three members in the group")
        status = listed()
        assert set(status) == {"streams-1", "streams-2", "streams-3"}
        assert all(st["running"] for st in status.values()), status
        assert [st["url"] for st in status.values()] == [
            f"http://127.0.0.1:{base + i}" for i in range(3)
        ]
        # Every replica ends up ready: in the group with its share of the partitions.
        wait_for(lambda: all(st["ready"] for st in listed().values()), 120, "all ready")

        down = keel("scale", "streams", "2")
        assert down.returncode == 0, down.stderr
        assert "stopped streams-3" in down.stderr
        wait_for(lambda: _members(admin, group) == 2, 120, "two members left")
        assert set(listed()) == {"streams-1", "streams-2"}
        assert all(st["running"] for st in listed().values())
        # Still refused past the partitions, and the running replicas are untouched.
        assert keel("scale", "streams", "9").returncode == 1
        assert _members(admin, group) == 2
        # `keel down` below stops streams-2 too: a replica the settings (one worker) do not name.
    finally:
        stopped = keel("down")
    assert stopped.returncode == 0, stopped.stderr
    assert not list((home / "run").glob("*.pid"))
    assert not (home / "run" / "scale.json").exists()
    wait_for(lambda: _members(admin, group) == 0, 60, "the group empty after keel down")


@pytest.mark.integration
def test_prometheus_reloads_its_targets_after_a_scale(tmp_path: Path) -> None:
    """`keel scale` ends with `reload_prometheus`: the running Prometheus of the stack rewrites
    its config from the replicas now listed and scrapes them (SIGHUP), no restart."""
    from keel.local.monitoring import PrometheusService, reload_prometheus

    settings = KeelSettings(
        home=tmp_path, prometheus_port=free_port(), streams_web_port=free_base_port()
    )
    prometheus = PrometheusService(settings, die_with_parent=True)
    api = f"http://127.0.0.1:{settings.prometheus_port}/api/v1"

    def jobs() -> set[str]:
        found = json.loads(http_get(f"{api}/targets")[1])["data"]["activeTargets"]
        return {t["labels"]["job"] for t in found}

    try:
        prometheus.start(print)
        wait_for(lambda: "keel-streams-1" in jobs(), 30, "the stack's targets")
        assert "keel-streams-2" not in jobs()
        _record_count(settings, _by_name(settings)["streams"], 2)
        reload_prometheus(settings, print)
        wait_for(lambda: "keel-streams-2" in jobs(), 30, "the new replica a target")
    finally:
        prometheus.stop(print)
