"""A stream worker told to stop exits within its shutdown timeout even when the brokers are
gone: its changelog producer is closed after Faust's last commit (before, librdkafka's
threads kept retrying the dead brokers and the process lived on for minutes)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from keel.kafka import TopicSpec, ensure_topics, make_admin, wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port, free_port
from keel.settings import KeelSettings, get_settings
from tests.polling import wait_for
from tests.processes import KEEL
from tests.streams.conftest import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_a_stopped_worker_exits_in_time_with_the_brokers_gone(
    schema_registry: str, redis_url: str, tmp_path: Path
) -> None:
    settings = get_settings()
    cluster = LocalKafka(
        tmp_path / "kafka",
        libs_home=settings.home,
        version=settings.kafka_version,
        base_port=free_base_port(),
        die_with_parent=True,
    )
    bootstrap = cluster.up(progress=lambda _m: None)
    worker: Worker | None = None
    try:
        prefix = f"stop-{uuid.uuid4().hex[:8]}-"
        admin = make_admin(KeelSettings(bootstrap_servers=bootstrap))
        ensure_topics(admin, [TopicSpec(f"{prefix}events", 2, 1)])
        wait_for_topics(admin, [f"{prefix}events"])
        port = free_port()
        env = {
            **os.environ,
            "KEEL_BOOTSTRAP_SERVERS": bootstrap,
            "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
            "KEEL_REDIS_URL": redis_url,
            "KEEL_STREAMS_APP_ID": f"{prefix}streams",
            "KEEL_STREAMS_SOURCE_TOPIC": f"{prefix}events",
            "KEEL_STREAMS_DLQ_TOPIC": f"{prefix}events-dlq",
            "KEEL_STREAMS_JOBS_TOPIC_PREFIX": prefix,
            "KEEL_STREAMS_DATA_DIR": str(tmp_path / "data"),
            "KEEL_STREAMS_WEB_PORT": str(port),
            "KEEL_STREAMS_SHUTDOWN_TIMEOUT_S": "5",
        }
        worker = Worker.start(
            [KEEL, "streams", "worker"], env, tmp_path / "worker.log", port=port, name="worker"
        )
        wait_for(worker.ready, 120, "the worker ready")
        from keel.producers.sdk import KeelProducer

        user = f"u-{uuid.uuid4().hex[:6]}"
        with KeelProducer(
            source="test",
            settings=KeelSettings(bootstrap_servers=bootstrap, schema_registry_url=schema_registry),
            registry_url=schema_registry,
            topic_prefix=prefix,
        ) as producer:
            producer.send(
                {
                    "type": "page.viewed",
                    "event_id": str(uuid.uuid4()),
                    "user_id": user,
                    "occurred_at": "2026-12-01T10:00:00Z",
                    "url": "https://s.example/",
                    "path": "/",
                    "title": None,
                    "referrer": None,
                }
            )
        # The view answers: the worker's changelog producer exists and has written.
        wait_for(lambda: worker.answers(f"/v1/views/user_activity/{user}"), 60, "the view")

        cluster.down(progress=lambda _m: None)
        started = time.monotonic()
        status = worker.stop_gracefully(timeout=90)
        took = time.monotonic() - started
        # 5 s of shutdown timeout, and a loaded machine's slack
        assert took < 30, f"the worker took {took:.0f}s to exit:\n{worker.tail()}"
        assert status in (0, 75), status
    finally:
        if worker is not None:
            worker.stop()
        cluster.down(progress=lambda _m: None)
        shutil.rmtree(cluster.root, ignore_errors=True)
