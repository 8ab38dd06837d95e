"""Fixtures of the stream processors' tests: real `keel streams worker` processes on topics
and a consumer group only the test owns, events encoded as Keel's Avro through the registry."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keel.errors import KeelError
from keel.kafka import TopicSpec, ensure_topics, make_consumer, make_producer, wait_for_topics
from keel.lag import group_lag
from keel.local.ports import free_port
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess


@dataclass
class Worker(KeelProcess):
    """A `keel streams worker`, whose HTTP answers are JSON."""

    def get(self, path: str) -> tuple[int, Any]:
        """(status, JSON body) of a GET; connection errors give (0, reason)."""
        status, body = super().get(path)
        if 200 <= status < 300:
            return status, json.loads(body or "null")
        if status == 0:
            return status, body
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def digest(self, limit: int = 60) -> str:
        """What to read when a test fails: warnings, errors and the group and recovery
        milestones of the worker's JSON log (pytest shows it only for failed tests)."""
        milestones = ("Worker ready", "generation", "Recovery", "indexed", "Revoking")
        picked = []
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in lines:
            start = line.find("{")
            try:
                record = json.loads(line[start:]) if start >= 0 else None
            except ValueError:
                record = None
            if not isinstance(record, dict):
                continue
            msg = str(record.get("msg", ""))
            if record.get("level") != "info" or any(m in msg for m in milestones):
                first = msg.splitlines()[0] if msg else ""
                picked.append(f"{str(record.get('ts'))[11:23]} {record.get('level')} {first[:160]}")
        return "\n".join(picked[-limit:])


@dataclass
class StreamsEnv:
    """One test's streams deployment: its own topics, group, data, Redis keys."""

    env: dict[str, str]
    prefix: str
    source: str
    dlq: str
    jobs_prefix: str
    cache_prefix: str
    tmp: Path
    workers: list[Worker] = field(default_factory=list)
    _serde: Any = None

    def start_worker(self, wait: bool = True, **extra_env: str) -> Worker:
        port = free_port()
        worker = Worker.start(
            [KEEL, "streams", "worker"],
            {**self.env, "KEEL_STREAMS_WEB_PORT": str(port), **extra_env},
            self.tmp / f"worker-{port}.log",
            port=port,
            name=f"worker {port}",
        )
        self.workers.append(worker)
        if wait:
            wait_for(worker.ready, 90, f"worker {port} ready")
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    @property
    def serde(self) -> Any:
        if self._serde is None:
            from keel.schemas.registry.client import RegistryClient
            from keel.schemas.serde import AvroSerde

            self._serde = AvroSerde(RegistryClient(self.env["KEEL_SCHEMA_REGISTRY_URL"]))
        return self._serde

    def send(self, events: Sequence[Mapping[str, Any]], poison: Sequence[bytes] = ()) -> None:
        """Events through Keel's producer SDK (the HTTP API's pipeline); poison as raw bytes."""
        from keel.producers.sdk import KeelProducer

        with KeelProducer(
            source="test",
            registry_url=self.env["KEEL_SCHEMA_REGISTRY_URL"],
            topic_prefix=self.prefix,
        ) as producer:
            for event in events:
                producer.send(event)
            results = producer.flush(30)
        failed = [r for r in results if not r.ok]
        assert not failed, failed[:3]
        if poison:
            raw = make_producer()
            for value in poison:
                raw.produce(self.source, key=b"poison", value=value)
            assert raw.flush(30) == 0

    def view(self, view: str, key: str, worker: Worker | None = None, **params: str) -> Any:
        worker = worker or self.alive()[0]
        query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in params.items())
        return worker.get(
            f"/v1/views/{view}/{urllib.request.quote(key)}" + (f"?{query}" if query else "")
        )

    def read_topic(self, topic: str, expect: int, timeout: float = 60) -> list[Any]:
        consumer = make_consumer(f"reader-{uuid.uuid4().hex[:8]}")
        consumer.subscribe([topic])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(messages) < expect and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    messages.append(msg)
            # a little longer, to see any message beyond the expected count
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    messages.append(msg)
        finally:
            consumer.close()
        return messages


@pytest.fixture
def streams_env(
    kafka_bootstrap: str,
    schema_registry: str,
    redis_url: str,
    new_topic: Callable[..., str],
    admin: Any,
    tmp_path: Path,
) -> Iterator[StreamsEnv]:
    # The SDK writes to <prefix>events, as the HTTP API does with KEEL_INGEST_TOPIC_PREFIX.
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    source = f"{prefix}events"
    ensure_topics(admin, [TopicSpec(source, 4)])
    wait_for_topics(admin, [source])
    dlq = new_topic("events-dlq", partitions=4)
    jobs_prefix = prefix
    app_id = f"test-streams-{uuid.uuid4().hex[:10]}"
    cache_prefix = f"test:{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_STREAMS_APP_ID": app_id,
        "KEEL_STREAMS_SOURCE_TOPIC": source,
        "KEEL_STREAMS_DLQ_TOPIC": dlq,
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": jobs_prefix,
        "KEEL_STREAMS_DATA_DIR": str(tmp_path / "data"),
        "KEEL_STREAMS_CACHE_PREFIX": cache_prefix,
        "KEEL_STREAMS_SESSION_TIMEOUT_S": "6",
        "KEEL_STREAMS_BATCH_WITHIN_S": "0.05",
        "KEEL_LOG_LEVEL": "INFO",
    }
    streams = StreamsEnv(env, prefix, source, dlq, jobs_prefix, cache_prefix, tmp_path)
    yield streams
    try:  # where each partition's committed offset stands: tells a stuck partition apart
        lag = group_lag(admin, app_id)
        print(f"--- group {app_id}: {lag.state}, {lag.members} members, lag {lag.total}")
        for p in lag.partitions:
            if p.topic.endswith(("-changelog", "-__leader")):  # read, never committed
                continue
            print(f"{p.topic.removeprefix(app_id)}[{p.partition}] at {p.committed}, lag {p.lag}")
    except KeelError as exc:
        print(f"--- group {app_id}: {exc}")
    for worker in streams.workers:
        # Printed in teardown: pytest shows it under the failure, so a CI log holds the
        # evidence after the temporary directory is gone.
        alive = worker.alive()
        print(f"--- worker {worker.port} ({'alive' if alive else 'exited'}):")
        if alive:
            print(f"readyz: {worker.get('/readyz')}")
        print(worker.digest())
        worker.stop()
    delete_app_topics(admin, app_id, jobs_prefix)


def delete_app_topics(admin: Any, app_id: str, jobs_prefix: str) -> None:
    from keel.kafka import delete_topics

    names = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(app_id) or t.startswith(jobs_prefix)
    ]
    delete_topics(admin, names)
