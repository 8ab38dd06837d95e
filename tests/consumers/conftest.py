"""Fixtures of the job workers' tests: a real SMTP server on loopback keeping what it gets."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from keel.consumers.errors import UndecodableJob
from keel.consumers.idempotency import RedisDoneStore
from keel.consumers.job import JobTopics
from keel.consumers.mail.server import Outbox, OutboxHandler, OutboxServer
from keel.consumers.worker import Worker
from tests.polling import wait_for


class RefusingHandler(OutboxHandler):
    """A mail server that answers `451 try again later` to the first `refuse` messages (as a
    busy or greylisting server does), then keeps mail like the local one."""

    def __init__(self, outbox: Outbox, refuse: int) -> None:
        super().__init__(outbox)
        self.refuse = refuse
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refused < self.refuse:
            self.refused += 1
            return "451 4.3.2 try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[OutboxServer]:
    server = OutboxServer(Outbox(tmp_path / "outbox"), port=0)
    server.start()
    yield server
    server.stop()


# --- worker harness --------------------------------------------------------------------


class JsonDecoder:
    """Plain JSON job records, to test the worker loop apart from Avro (the Avro path is
    tested end to end with the registry)."""

    def record_name(self, data: bytes) -> str | None:
        return None

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UndecodableJob(f"not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise UndecodableJob("not a JSON object")
        return value


@pytest.fixture
def job_topics(new_topic: Callable[..., str]) -> JobTopics:
    return JobTopics(new_topic("jobs", 3), new_topic("retry", 3), new_topic("dlq", 1))


@pytest.fixture
def done_store(redis_url: str) -> Iterator[RedisDoneStore]:
    """The session's real Redis as the done-key store. Passed explicitly: a worker left to
    its settings would look for Redis on the default port, which CI does not run."""
    store = RedisDoneStore(redis_url, ttl_seconds=300)
    yield store
    store.close()


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[Producer]:
    p = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    yield p
    p.flush(10)


def produce_json(producer: Producer, topic: str, jobs: list[Mapping[str, Any]]) -> None:
    for job in jobs:
        producer.produce(
            topic, key=str(job.get("user_id", "")).encode(), value=json.dumps(job).encode()
        )
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """The first `count` messages of a topic (from the beginning), or fail."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    assert len(out) >= count, f"{topic}: {len(out)} of {count} messages"
    return out


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-probe"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in tps}
    finally:
        consumer.close()


def partition_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "partitions-probe"})
    try:
        return len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        consumer.close()


def drained(bootstrap: str, group: str, topic: str) -> bool:
    """The group committed every message of the topic (on all of its partitions: whoever
    created it decided how many)."""
    partitions = partition_count(bootstrap, topic)
    return committed(bootstrap, group, topic, partitions) == end_offsets(
        bootstrap, topic, partitions
    )


class RunningWorker:
    """A Worker in a thread, stopped (gracefully) at the end of the test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()

    def __enter__(self) -> Worker:
        self.start()
        wait_for(
            lambda: self.worker.runners and all(r.joined for r in self.worker.runners),
            what="the worker to join its groups",
        )
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error
