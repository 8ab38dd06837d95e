"""Fixtures of the fault suite: stream workers as real processes on topics and a group only
the test owns, a sender of events in the background, and the truth read back from Kafka."""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from keel.kafka import TopicSpec, ensure_topics, wait_for_topics
from tests.polling import wait_for
from tests.processes import KEEL
from tests.streams.conftest import StreamsEnv, Worker, delete_app_topics

SOURCE_PARTITIONS = 8


@dataclass
class FaultEnv(StreamsEnv):
    """A StreamsEnv whose workers can be killed and restarted on the same port (so with the
    same data folder, as `keel up` restarts `streams-N`)."""

    replication: int = 1

    def restart(self, worker: Worker) -> Worker:
        """A new worker process in the place of `worker` (which must have exited)."""
        assert not worker.alive(), f"{worker.name} still runs"
        replacement = Worker.start(
            [KEEL, "streams", "worker"],
            {**self.env, "KEEL_STREAMS_WEB_PORT": str(worker.port)},
            self.tmp / f"worker-{worker.port}-{len(self.workers)}.log",
            port=worker.port,
            name=worker.name,
        )
        self.workers.append(replacement)
        return replacement


@dataclass
class Sender:
    """Sends `page.viewed` events for `users` through the producer SDK from a thread, a few
    batches resent with the same event_ids (a client retrying), until stopped. `acked` is
    every event_id the broker acknowledged, per user."""

    env: FaultEnv
    users: list[str]
    rate: float = 250.0  # events per second, roughly
    batch: int = 25
    resend_ratio: float = 0.05
    seed: int = 17
    acked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    sent: int = 0
    resent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fault-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the sender did not stop"
        assert not self.failures, self.failures[:3]

    def wait_sent(self, count: int) -> None:
        """Until `count` more events are acknowledged."""
        mark = self.sent
        wait_for(lambda: self.sent >= mark + count or self.failures, 60, f"{count} more events")
        assert not self.failures, self.failures[:3]

    def _run(self) -> None:
        from keel.producers.sdk import KeelProducer

        rng = random.Random(self.seed)
        pace = self.batch / self.rate
        try:
            with KeelProducer(
                source="faults",
                registry_url=self.env.env["KEEL_SCHEMA_REGISTRY_URL"],
                topic_prefix=self.env.prefix,
            ) as producer:
                while not self._stop.is_set():
                    events = [self._event(rng) for _ in range(self.batch)]
                    producer.send_many(events)
                    if rng.random() < self.resend_ratio:  # the same event_ids again
                        producer.send_many(events)
                        self.resent += len(events)
                    for result in producer.flush(30):
                        if not result.ok:
                            self.failures.append(f"{result.event_id}: {result.error}")
                    for event in events:
                        self.acked[event["user_id"]].add(event["event_id"])
                    self.sent += len(events)
                    self._stop.wait(pace)  # pacing the traffic, not waiting for an effect
        except Exception as exc:  # the test fails on stop(), naming it
            self.failures.append(f"sender crashed: {type(exc).__name__}: {exc}")

    def _event(self, rng: random.Random) -> dict[str, Any]:
        return {
            "type": "page.viewed",
            "event_id": str(uuid.uuid4()),
            "user_id": rng.choice(self.users),
            "occurred_at": "2026-12-01T10:00:00Z",
            "url": "https://s.example/",
            "path": "/",
            "title": None,
            "referrer": None,
        }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A fault test's time limit grows with its rounds (`--fault-iterations`)."""
    iterations = int(config.getoption("fault_iterations"))
    for item in items:
        if item.get_closest_marker("faults") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(600 + 150 * iterations))


def read_all(env: FaultEnv, topic: str, partitions: int) -> list[Any]:
    """Every message of `topic` from its start to its end as of now."""
    consumer = Consumer(
        {
            "bootstrap.servers": env.env["KEEL_BOOTSTRAP_SERVERS"],
            "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    messages: list[Any] = []
    try:
        ends: dict[int, int] = {}
        for p in range(partitions):
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        positions = dict.fromkeys(ends, 0)
        while any(positions[p] < ends[p] for p in ends):
            for msg in consumer.consume(1000, timeout=5):
                if msg.error():
                    raise AssertionError(f"reading {topic}: {msg.error()}")
                positions[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
                messages.append(msg)
    finally:
        consumer.close()
    return messages


def distinct_on_kafka(env: FaultEnv, event_type: str) -> dict[str, set[str]]:
    """The distinct event_ids of `event_type` per user, read back from the source topic (every
    partition from its start to its end as of now): the truth a view must equal."""
    found: dict[str, set[str]] = defaultdict(set)
    for msg in read_all(env, env.source, SOURCE_PARTITIONS):
        record = env.serde.decode(msg.value())
        if record.get("type") == event_type:
            found[str(record["user_id"])].add(str(record["event_id"]))
    return found


def first_divergence(env: FaultEnv, users: list[str], event_type: str) -> list[str]:
    """For each user, the first `user_activity` changelog record whose count differs from the
    distinct event_ids at or below its watermark on the source: where (changelog offset,
    time) the view went wrong, the record before it, and the user's events in between with
    the dedup batch records that name them. What to read when the fault test fails."""
    app_id = env.env["KEEL_STREAMS_APP_ID"]
    seen: dict[str, list[tuple[int, str]]] = defaultdict(list)  # user -> (offset, event_id)
    for msg in read_all(env, env.source, SOURCE_PARTITIONS):
        record = env.serde.decode(msg.value())
        if record.get("type") == event_type and str(record["user_id"]) in users:
            seen[str(record["user_id"])].append((int(msg.offset() or 0), str(record["event_id"])))
    dedup: dict[str, list[str]] = defaultdict(list)  # event_id -> "batch key: offset"
    for msg in read_all(env, f"{app_id}-dedup-changelog", SOURCE_PARTITIONS):
        if msg.value() is None:
            continue
        key = json.loads(msg.key())
        for event_id, offset, _ts in json.loads(msg.value()).get("e", ()):
            dedup[event_id].append(f"{key}@{msg.offset()}:{offset}")
    out: list[str] = []
    wanted = set(users)
    previous: dict[str, tuple[int, int, int]] = {}  # user -> (changelog offset, mark, count)
    for msg in read_all(env, f"{app_id}-user_activity-changelog", SOURCE_PARTITIONS):
        user = json.loads(msg.key())
        if user not in wanted:
            continue
        mark, state = json.loads(msg.value())
        got = int(state["counts"].get(event_type, 0))
        ids = {eid for offset, eid in seen[user] if offset <= mark[0]}
        if got == len(ids):
            previous[user] = (int(msg.offset() or 0), int(mark[0]), got)
            continue
        wanted.discard(user)
        before = previous.get(user, (-1, -1, 0))
        between = [
            f"{offset}:{eid[:8]}{' (resent)' if any(o < offset and e == eid for o, e in seen[user]) else ''}"
            f" dedup {dedup.get(eid, [])}"
            for offset, eid in seen[user]
            if before[1] < offset <= mark[0]
        ]
        _kind, ts = msg.timestamp()
        out.append(
            f"{user} [p{msg.partition()}] changelog@{msg.offset()} ts {ts}: watermark {mark[0]}, "
            f"counted {got}, distinct {len(ids)}; before it changelog@{before[0]} watermark "
            f"{before[1]} counted {before[2]}; events between: {between}"
        )
    return out


@pytest.fixture
def fault_iterations(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("fault_iterations"))


@pytest.fixture
def fault_env(
    kafka_bootstrap: str,
    schema_registry: str,
    redis_url: str,
    admin: Any,
    tmp_path: Path,
) -> Iterator[FaultEnv]:
    brokers = len(admin.list_topics(timeout=10).brokers)
    replication = min(3, brokers)
    prefix = f"fault-{uuid.uuid4().hex[:8]}-"
    source = f"{prefix}events"
    dlq = f"{prefix}events-dlq"
    ensure_topics(
        admin,
        [
            TopicSpec(source, SOURCE_PARTITIONS, replication),
            TopicSpec(dlq, SOURCE_PARTITIONS, replication),
        ],
    )
    wait_for_topics(admin, [source, dlq])
    app_id = f"fault-streams-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_STREAMS_APP_ID": app_id,
        "KEEL_STREAMS_SOURCE_TOPIC": source,
        "KEEL_STREAMS_DLQ_TOPIC": dlq,
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": prefix,
        "KEEL_STREAMS_DATA_DIR": str(tmp_path / "data"),
        "KEEL_STREAMS_CACHE_PREFIX": f"fault:{uuid.uuid4().hex[:8]}:",
        "KEEL_STREAMS_SESSION_TIMEOUT_S": "10",  # heartbeats survive a loaded machine
        "KEEL_STREAMS_BATCH_WITHIN_S": "0.05",
        "KEEL_STREAMS_STALL_TIMEOUT_S": "30",
        # Explicit, whatever the default: the internal topics as replicated as the source.
        "KEEL_STREAMS_REPLICATION_FACTOR": str(replication),
        "KEEL_LOG_LEVEL": "INFO",
    }
    streams = FaultEnv(env, prefix, source, dlq, prefix, env["KEEL_STREAMS_CACHE_PREFIX"], tmp_path)
    streams.replication = replication
    yield streams
    for worker in streams.workers:
        alive = worker.alive()
        if alive or worker is streams.workers[-1]:
            print(f"--- worker {worker.port} ({'alive' if alive else 'exited'}):")
            print(worker.digest())
        worker.stop()
    delete_app_topics(admin, app_id, prefix)
