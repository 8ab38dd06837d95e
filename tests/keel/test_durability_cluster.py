"""Durability by default, on `keel broker up --brokers 3` (default.replication.factor 3,
min.insync.replicas 2): whichever component starts first, every topic Keel creates has three
replicas and two in sync, and `keel topics plan` and `keel doctor` flag one that has not."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from keel.kafka import wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.ports import free_port
from keel.producers.auth import create_key
from keel.topics import is_kafka_internal
from tests.harness import start_registry
from tests.keel.conftest import replication
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel
from tests.producers.conftest import post

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Settings that would decide replication instead of the cluster: not this test's subject.
_OPERATOR = (
    "KEEL_REPLICATION_FACTOR",
    "KEEL_STREAMS_REPLICATION_FACTOR",
    "KEEL_MIN_INSYNC_REPLICAS",
)


class Stack:
    """Keel's components with their default topic names, on a private cluster."""

    def __init__(self, cluster: LocalKafka, tmp: Path) -> None:
        self.tmp = tmp
        self.bootstrap = cluster.bootstrap()
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        self.env = {k: v for k, v in os.environ.items() if k not in _OPERATOR}
        self.env.update(
            KEEL_BOOTSTRAP_SERVERS=self.bootstrap,
            KEEL_HOME=str(tmp / "home"),
            KEEL_STREAMS_DATA_DIR=str(tmp / "streams"),
            KEEL_STREAMS_CACHE_ENABLED="false",  # no Redis: not what this test is about
            KEEL_INGEST_KEYS_FILE=str(tmp / "keys.json"),
            KEEL_LOG_LEVEL="INFO",
        )
        self.processes: list[KeelProcess] = []

    def registry(self) -> None:
        port = free_port()
        process, url = start_registry(
            self.tmp / "registry", port, "_schemas", KEEL_BOOTSTRAP_SERVERS=self.bootstrap
        )
        self.processes.append(process)
        self.env["KEEL_SCHEMA_REGISTRY_URL"] = url

    def streams(self) -> None:
        port = free_port()
        worker = KeelProcess.start(
            [KEEL, "streams", "worker"],
            {**self.env, "KEEL_STREAMS_WEB_PORT": str(port)},
            self.tmp / "streams.log",
            port=port,
            name="stream worker",
        )
        self.processes.append(worker)
        wait_for(worker.ready, 120, "the stream worker ready")

    def jobs(self) -> None:
        run_keel("jobs", "topics", env=self.env, check=True)

    def ingest(self) -> str:
        """`keel ingest` serving; returns an API key for it."""
        key = create_key(self.tmp / "keys.json", "durability-test")
        port = free_port()
        process = KeelProcess.start(
            [KEEL, "ingest", "--port", str(port), "--workers", "1"],
            self.env,
            self.tmp / "ingest.log",
            port=port,
            name="ingest",
        )
        self.processes.append(process)
        wait_for(lambda: process.answers("/healthz"), 60, "ingest answering")
        self.ingest_url = process.url
        return key

    def keel_topics(self) -> dict[str, tuple[int, int]]:
        names = [n for n in self.admin.list_topics(timeout=10).topics if not is_kafka_internal(n)]
        return replication(self.admin, names)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop_and_show()


@pytest.fixture
def stack(three_brokers: LocalKafka, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(three_brokers, tmp_path)
    yield stack
    stack.stop()


EXPECTED = {
    "events",
    "events.dlq",
    "_schemas",
    "keel-streams-__assignor-__leader",
    "jobs.email",
    "jobs.email.retry",
    "jobs.email.dlq",
    "jobs.report_ready.dlq",
}


def _assert_durable(stack: Stack) -> dict[str, tuple[int, int]]:
    topics = stack.keel_topics()
    assert set(topics) >= EXPECTED, sorted(topics)
    assert any(t.endswith("-changelog") for t in topics), sorted(topics)
    weak = {name: rf_isr for name, rf_isr in topics.items() if rf_isr != (3, 2)}
    assert not weak, f"topics without 3 replicas and min.insync.replicas 2: {weak}"
    return topics


def _doctor(stack: Stack, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    result = run_keel("doctor", "--json", "--timeout", "10", *args, env=stack.env, timeout=120)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, {c["check"]: c for c in report["checks"]}


def test_streams_first_every_keel_topic_has_three_replicas_and_doctor_agrees(
    stack: Stack,
) -> None:
    stack.registry()
    stack.streams()  # creates events, events.dlq, changelogs, job topics, Faust's leader topic
    stack.jobs()
    _assert_durable(stack)

    code, checks = _doctor(stack)
    failed = {name: c["detail"] for name, c in checks.items() if not c["ok"]}
    assert code == 0, failed
    assert checks["topic events"]["detail"] == "replication 3, min.insync.replicas 2"
    assert checks["topic __consumer_offsets"]["ok"]
    assert checks["group keel-streams"]["ok"]
    assert checks["catalog"]["ok"] and checks["registry"]["ok"]

    # A topic created with one replica on purpose (as a tool that names its own would):
    # both plan and doctor flag it, and say how to fix it.
    single = f"jobs.single-{uuid.uuid4().hex[:6]}"
    [future] = stack.admin.create_topics([NewTopic(single, 2, 1)]).values()
    future.result(30)
    wait_for_topics(stack.admin, [single])
    topics_file = stack.tmp / "topics.toml"
    topics_file.write_text(
        f'[[topics]]\nname = "events"\npartitions = 6\n\n'
        f'[[topics]]\nname = "{single}"\npartitions = 2\n'
    )
    plan = run_keel("topics", "plan", "-f", str(topics_file), env=stack.env)
    assert plan.returncode == 3, plan.stdout + plan.stderr
    lines = plan.stdout.splitlines()
    assert (
        "  events  replication 3 (file: default 3)  min.insync.replicas 2 (file: default 2)"
        in lines
    )
    [flagged] = [line for line in lines if line.startswith(f"! {single}  ")]
    assert flagged.startswith(
        f"! {single}  replication 1 (file: default 3)  min.insync.replicas 2 (file: default 2): "
        "a single replica on a 3-broker cluster"
    )
    assert f"fix: raise {single}'s replication to 3 by reassigning its partitions" in flagged

    code, checks = _doctor(stack, "-f", str(topics_file))
    assert code == 1
    assert not checks[f"topic {single}"]["ok"]
    assert "a single replica on a 3-broker cluster" in str(checks[f"topic {single}"]["detail"])
    assert [name for name, c in checks.items() if not c["ok"]] == [f"topic {single}"]


def test_ingest_first_then_jobs_then_streams_every_keel_topic_has_three_replicas(
    stack: Stack,
) -> None:
    stack.registry()  # _schemas
    key = stack.ingest()  # creates nothing: it produces to events once something made it
    stack.jobs()  # job, retry and dead-letter topics, before any stream worker runs
    assert "jobs.email" in stack.keel_topics()
    stack.streams()  # events and the rest, on a cluster where the job topics exist
    _assert_durable(stack)

    event = {"event_id": str(uuid.uuid4()), "type": "page.viewed", "user_id": "u-1",
             "url": "https://shop.example/", "path": "/"}  # fmt: skip
    status, _headers, body = post(stack.ingest_url, {"events": [event]}, key)
    assert status in (202, 207), body
    code, checks = _doctor(stack)
    failed = {name: c["detail"] for name, c in checks.items() if not c["ok"]}
    assert code == 0, failed
