"""Fixtures of the ingestion tests: the events API served in a thread of the test process,
its own topic (a unique KEEL_INGEST_TOPIC_PREFIX), an API key, and a reader of the topic
that decodes with confluent-kafka's own AvroDeserializer."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.local.ports import free_port
from keel.producers.app import build_app
from keel.producers.auth import create_key
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import http_get


@pytest.fixture
def ingest_settings(
    kafka_bootstrap: str, schema_registry: str, tmp_path: Path, admin: Any
) -> Iterator[KeelSettings]:
    prefix = f"test-ingest-{uuid.uuid4().hex[:8]}-"
    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=schema_registry,
        home=tmp_path / "home",
        ingest_topic_prefix=prefix,
        ingest_keys_file=tmp_path / "keys.json",
        ingest_delivery_timeout_s=5.0,
    )
    topic = prefix + "events"
    ensure_topics(admin, [TopicSpec(topic, 3)])
    wait_for_topics(admin, [topic])
    yield settings
    delete_topics(admin, [topic])


@pytest.fixture
def api_key(ingest_settings: KeelSettings) -> str:
    assert ingest_settings.ingest_keys_file is not None
    return create_key(ingest_settings.ingest_keys_file, "test-shop")


@contextmanager
def serve_in_thread(app: web.Application, port: int | None = None) -> Iterator[str]:
    """Run `app` on its own event loop in a thread; yield its base URL once it is ready."""
    port = port or free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 60, f"{url}/readyz")
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def ingest_url(ingest_settings: KeelSettings) -> Iterator[str]:
    with serve_in_thread(build_app(ingest_settings)) as url:
        yield url


def post(
    url: str, body: Any, key: str | None, *, content_type: str = "application/json",
    raw: bytes | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """POST to /v1/events; returns status, headers, parsed JSON body."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/events", data=data, method="POST")
    request.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        payload = err.read()
        return err.code, dict(err.headers), json.loads(payload) if payload else None


def read_topic(
    bootstrap: str, registry_url: str, topic: str, *, expect: int | None = None,
    timeout: float = 30.0, idle: float = 2.0,
) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:  # fmt: skip
    """Every record of `topic` from the start as (partition, offset, key, value), decoded by
    confluent-kafka's AvroDeserializer. Stops at `expect` records, or when `idle` seconds
    pass with nothing new after the high watermarks were reached."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }
    out: list[tuple[int, int, bytes | None, dict[str, Any]]] = []
    positions = dict.fromkeys(partitions, 0)
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                break
            caught_up = all(positions[p] >= ends[p] for p in partitions)
            if expect is None and caught_up and time.monotonic() - last_new > idle:
                break
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            last_new = time.monotonic()
            value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
            out.append((msg.partition(), msg.offset(), msg.key(), value))
            positions[msg.partition()] = msg.offset() + 1
        else:
            # The deadline, not the log's end, stopped the read: what was not read is not
            # missing from Kafka, so a caller must not take this partial read for the topic.
            behind = {p: (positions[p], ends[p]) for p in partitions if positions[p] < ends[p]}
            if expect is None and behind:
                raise TimeoutError(
                    f"read {len(out)} records of {topic} in {timeout:g} s and stopped short of "
                    f"the end: (position, end) of each partition behind {behind}"
                )
    finally:
        consumer.close()
    return out


@pytest.fixture
def topic_reader(
    kafka_bootstrap: str, schema_registry: str, ingest_settings: KeelSettings
) -> Callable[..., list[tuple[int, int, bytes | None, dict[str, Any]]]]:
    topic = ingest_settings.ingest_topic_prefix + "events"

    def read(**kwargs: Any) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:
        return read_topic(kafka_bootstrap, schema_registry, topic, **kwargs)

    return read
