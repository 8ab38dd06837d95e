"""Proof that faust-streaming (aiokafka) with a rocksdict-backed table runs on Kafka 4."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from keel.kafka import make_consumer, make_producer
from tests.processes import KeelProcess

APP = Path(__file__).with_name("faust_minimal_app.py")


def test_agent_consumes_updates_a_table_and_produces(
    kafka_bootstrap: str, new_topic: Callable[..., str], group_id: str, tmp_path: Path
) -> None:
    source, sink = new_topic("faust-in"), new_topic("faust-out")
    env = {
        **os.environ,
        "FAUST_APP_ID": group_id,
        "FAUST_DATADIR": str(tmp_path / "faust"),
        "FAUST_IN": source,
        "FAUST_OUT": sink,
    }
    worker = KeelProcess.start(
        [sys.executable, str(APP)], env, tmp_path / "faust.log", name="the faust worker"
    )
    try:
        producer = make_producer()
        words = ["a", "b", "a", "c", "a", "b"]
        for word in words:
            producer.produce(source, key=b"k", value=word.encode())
        assert producer.flush(30) == 0

        consumer = make_consumer(f"{group_id}-reader")
        consumer.subscribe([sink])
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while len(seen) < len(words) and time.monotonic() < deadline:
            assert worker.alive(), worker.tail()
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.value().decode())
        consumer.close()
        assert seen == ["a=1", "b=1", "a=2", "c=1", "a=3", "b=2"]
        # The table lives in RocksDB on disk (rocksdict), not in memory.
        assert any((tmp_path / "faust").rglob("*.sst")) or any(
            (tmp_path / "faust").rglob("CURRENT")
        )
    finally:
        worker.stop(30)
