"""The whole chain a product sees: `user.signed_up` events (one sent twice by a retrying
client) → the streams worker's job trigger (the real `keel streams worker`, black box) →
`job.email` → the email worker → one welcome email per user on a real SMTP server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from consumers.handlers import EmailJob
from consumers.idempotency import RedisDoneStore
from consumers.job import JobTopics
from consumers.mail.server import OutboxServer
from consumers.mail.smtp import Mailer
from consumers.worker import Worker, WorkerConfig
from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.settings import KeelSettings
from tests.consumers.conftest import RunningWorker, drained, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prefix(admin: Any) -> Iterator[str]:
    value = f"test-{uuid.uuid4().hex[:8]}."
    yield value
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(value)]
    delete_topics(admin, names)


def test_a_signed_up_user_receives_exactly_one_welcome_email(
    kafka_bootstrap: str,
    schema_registry: str,
    redis_url: str,
    admin: Any,
    prefix: str,
    smtp_server: OutboxServer,
    tmp_path: Path,
) -> None:
    from schemas.envelope import validate_event
    from schemas.registry.client import RegistryClient
    from schemas.serde import AvroSerde

    events = f"{prefix}events"
    ensure_topics(admin, [TopicSpec(events, 3)])
    wait_for_topics(admin, [events])
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_STREAMS_APP_ID": f"{prefix}streams",
        "KEEL_STREAMS_SOURCE_TOPIC": events,
        "KEEL_STREAMS_DLQ_TOPIC": f"{prefix}events.dlq",
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": prefix,
        "KEEL_STREAMS_DATA_DIR": str(tmp_path / "streams"),
        "KEEL_STREAMS_CACHE_ENABLED": "false",
        "KEEL_STREAMS_WEB_PORT": str(_free_port()),
    }
    keel = str(Path(sys.executable).parent / "keel")
    log = (tmp_path / "streams.log").open("wb")
    streams = subprocess.Popen([keel, "streams", "worker"], env=env, stdout=log, stderr=log)

    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry, redis_url=redis_url
    )
    topics = JobTopics.for_job("email", prefix=prefix)
    handler = EmailJob(
        Mailer("127.0.0.1", smtp_server.port), sender="Keel <k@keel.localhost>", topics=topics
    )
    store = RedisDoneStore(redis_url, ttl_seconds=600)
    group = f"{prefix}keel.jobs.email"
    worker = Worker(
        [handler],
        settings=settings,
        store=store,
        config=WorkerConfig(commit_interval_s=0.1, consumer_overrides={"session.timeout.ms": 6000}),
        http_port=0,
        group_ids={"email": group},
    )
    serde = AvroSerde(RegistryClient(schema_registry))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    now = datetime.now(UTC)
    signups = []
    for user, name in (("u-ann", "Ann"), ("u-bob", "Bob")):
        data = {
            "event_id": str(uuid.uuid4()),
            "type": "user.signed_up",
            "user_id": user,
            "occurred_at": now.isoformat(),
            "email": f"{name.lower()}@example.com",
            "name": name,
        }
        event_type, record = validate_event(data, source="test")
        signups.append((user.encode(), serde.encode_with(event_type, record)))
    try:
        with RunningWorker(worker):
            # Ann's client retried: the same event (same event_id) arrives twice
            for key, value in (signups[0], signups[0], signups[1]):
                producer.produce(events, value=value, key=key)
            assert producer.flush(30) == 0

            def two_emails() -> bool:
                if streams.poll() is not None:
                    tail = (tmp_path / "streams.log").read_text(errors="replace")[-1500:]
                    raise AssertionError(f"the streams worker exited:\n{tail}")
                return len(smtp_server.outbox.messages()) >= 2

            wait_for(
                two_emails,
                timeout=120,
                what=f"two welcome emails (streams log: {tmp_path / 'streams.log'})",
            )
            wait_for(lambda: drained(kafka_bootstrap, group, topics.source, 3), what="commit")
    finally:
        streams.terminate()
        streams.wait(30)
        log.close()
        store.close()
    mails = smtp_server.outbox.messages()
    assert sorted(m.envelope_to[0] for m in mails) == ["ann@example.com", "bob@example.com"]
    assert {m.subject for m in mails} == {"Welcome to Keel, Ann!", "Welcome to Keel, Bob!"}
