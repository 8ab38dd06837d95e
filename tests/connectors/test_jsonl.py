"""The README's example sink (connectors/jsonl.py) against a real Kafka and registry:
events published with the SDK become lines, a record that is not Keel's Avro goes to the
dead-letter topic with the runtime's headers, offsets are committed after the fsync, and a
restarted sink appends nothing twice."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from keel.connectors.jsonl import JsonLinesSink
from keel.deadletters import H_ERROR_CLASS, H_REASON, read
from keel.kafka import (
    TopicSpec,
    delete_topics,
    ensure_topics,
    make_consumer,
    make_producer,
    wait_for_topics,
)
from keel.producers.sdk import KeelProducer
from keel.runtime import RunnerConfig
from keel.settings import KeelSettings
from tests.polling import wait_for


def test_events_become_lines_and_garbage_a_dead_letter(
    kafka_bootstrap: str, schema_registry: str, admin: AdminClient, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:10]
    prefix = f"test-jsonl-{suffix}-"
    source, dlq = prefix + "events", prefix + "dlq"
    ensure_topics(admin, [TopicSpec(source, 2), TopicSpec(dlq, 1)])
    wait_for_topics(admin, [source, dlq])
    settings = KeelSettings(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry)
    config = RunnerConfig(
        group=f"test-jsonl-{suffix}", topics=[source], dlq_topic=dlq, batch_ms=100,
        session_timeout_ms=6000,
    )  # fmt: skip
    path = tmp_path / "events.jsonl"
    ids = [str(uuid.uuid4()) for _ in range(5)]
    raw = make_producer(settings)
    raw.produce(source, key=b"junk", value=b"not keel avro", partition=0)
    assert raw.flush(30) == 0

    def lines() -> list[dict[str, object]]:
        text = path.read_bytes() if path.exists() else b""
        return [orjson.loads(line) for line in text.splitlines()]

    def committed() -> int:
        consumer = make_consumer(config.group, settings)
        try:
            tps = [TopicPartition(source, p) for p in range(2)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        finally:
            consumer.close()

    def send(*events: str) -> None:
        with KeelProducer(
            source="test", settings=settings, registry_url=schema_registry, topic_prefix=prefix
        ) as producer:
            for n, event_id in enumerate(events):
                producer.send(
                    {"event_id": event_id, "type": "page.viewed", "user_id": f"u{n}",
                     "url": "https://x/p", "path": "/p"}
                )  # fmt: skip
            assert all(r.ok for r in producer.flush(30))

    def run_sink(sent: int, before: Callable[[], None] = lambda: None) -> None:
        sink = JsonLinesSink(settings, path, config)
        stop = threading.Event()
        thread = threading.Thread(target=sink.runner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: sink.runner.ready, 60, "the sink in its group")
            before()
            wait_for(lambda: committed() == sent, 60, f"offsets committed past all {sent}")
        finally:
            stop.set()
            thread.join(30)
            sink.runner.close()

    send(*ids)
    run_sink(6)
    assert sorted(str(x["event_id"]) for x in lines()) == sorted(ids)
    assert {x["_topic"] for x in lines()} == {source}
    # Restarted, it goes on from the committed offsets: one more event, one more line.
    late = str(uuid.uuid4())
    run_sink(7, before=lambda: send(late))
    assert sorted(str(x["event_id"]) for x in lines()) == sorted([*ids, late])
    [letter] = read(settings, dlq)
    assert letter.value == b"not keel avro" and letter.key == b"junk"
    assert letter.headers[H_REASON] == "undecodable"
    assert letter.headers[H_ERROR_CLASS].startswith("keel.schemas.errors.")
    delete_topics(admin, [source, dlq])
