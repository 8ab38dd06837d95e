"""The whole chain a product sees, through the real `keel streams worker` (a black box):
user events → the streams' job triggers and views → job events → the job workers → emails
on a real SMTP server and reports in the report store."""

from __future__ import annotations

import csv
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from keel.consumers.handlers import EmailJob, Emitter, ReportJob, ReportReadyTrigger
from keel.consumers.idempotency import RedisDoneStore
from keel.consumers.job import JobHandler, JobTopics
from keel.consumers.mail.server import OutboxServer
from keel.consumers.mail.smtp import Mailer
from keel.consumers.reports import ReportStore, ViewsClient
from keel.consumers.worker import Worker, WorkerConfig
from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.local.ports import free_port as _free_port
from keel.settings import KeelSettings
from tests.consumers.conftest import RunningWorker, drained
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess

pytestmark = pytest.mark.slow


@dataclass
class Chain:
    prefix: str
    events: str
    views_url: str
    settings: KeelSettings
    serde: Any
    streams: KeelProcess

    def send(self, producer: Producer, data: dict[str, Any]) -> None:
        from keel.schemas.envelope import validate_event

        event_type, record = validate_event(data, source="test")
        value = self.serde.encode_with(event_type, record)
        producer.produce(self.events, key=str(data["user_id"]).encode(), value=value)
        assert producer.flush(30) == 0

    def check_streams(self) -> None:
        if not self.streams.alive():
            raise AssertionError(f"the streams worker exited:\n{self.streams.tail()}")


@pytest.fixture
def chain(
    kafka_bootstrap: str, schema_registry: str, redis_url: str, admin: Any, tmp_path: Path
) -> Iterator[Chain]:
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    events = f"{prefix}events"
    ensure_topics(admin, [TopicSpec(events, 3)])
    wait_for_topics(admin, [events])
    port = _free_port()
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
        "KEEL_STREAMS_WEB_PORT": str(port),
    }
    streams = KeelProcess.start(
        [KEEL, "streams", "worker"],
        env,
        tmp_path / "streams.log",
        port=port,
        name="the streams worker",
    )
    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry, redis_url=redis_url
    )
    serde = AvroSerde(RegistryClient(schema_registry))
    try:
        yield Chain(prefix, events, streams.url, settings, serde, streams)
    finally:
        streams.stop_gracefully(30)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        delete_topics(admin, names)


def _worker(chain: Chain, handlers: list[JobHandler], store: RedisDoneStore) -> Worker:
    return Worker(
        handlers,
        settings=chain.settings,
        store=store,
        config=WorkerConfig(
            commit_interval_s=0.1,
            consumer_overrides={"session.timeout.ms": 6000},
        ),
        http_port=0,
        group_ids={h.name: f"{chain.prefix}keel.jobs.{h.name}" for h in handlers},
    )


def _signup(user: str, name: str, when: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "user.signed_up",
        "user_id": user,
        "occurred_at": when.isoformat(),
        "email": f"{name.lower()}@example.com",
        "name": name,
    }


def test_a_signed_up_user_receives_exactly_one_welcome_email(
    chain: Chain, done_store: RedisDoneStore, producer: Producer, smtp_server: OutboxServer
) -> None:
    topics = JobTopics.for_job("email", prefix=chain.prefix)
    email = EmailJob(
        Mailer("127.0.0.1", smtp_server.port), sender="k@keel.localhost", topics=topics
    )
    now = datetime.now(UTC)
    ann, bob = _signup("u-ann", "Ann", now), _signup("u-bob", "Bob", now)
    with RunningWorker(_worker(chain, [email], done_store)):
        for event in (ann, ann, bob):  # Ann's client retried: the same event_id twice
            chain.send(producer, event)

        def two_emails() -> bool:
            chain.check_streams()
            return len(smtp_server.outbox.messages()) >= 2

        wait_for(two_emails, timeout=120, what=f"two welcome emails ({chain.streams.log})")
        group = f"{chain.prefix}keel.jobs.email"
        wait_for(lambda: drained(chain.settings.bootstrap_servers, group, topics.source))
    mails = smtp_server.outbox.messages()
    assert sorted(m.envelope_to[0] for m in mails) == ["ann@example.com", "bob@example.com"]
    assert {m.subject for m in mails} == {"Welcome to Keel, Ann!", "Welcome to Keel, Bob!"}


def test_a_requested_report_is_built_from_the_view_and_its_ready_email_arrives(
    chain: Chain,
    done_store: RedisDoneStore,
    producer: Producer,
    smtp_server: OutboxServer,
    tmp_path: Path,
) -> None:
    prefix = chain.prefix
    email_topics = JobTopics.for_job("email", prefix=prefix)
    settings = chain.settings
    handlers: list[JobHandler] = [
        ReportJob(
            ReportStore(tmp_path / "reports"),
            ViewsClient(chain.views_url),
            Emitter(settings, chain.serde),
            events_topic=chain.events,
            topics=JobTopics.for_job("report", prefix=prefix),
        ),
        ReportReadyTrigger(
            Emitter(settings, chain.serde),
            email_topic=email_topics.source,
            topics=JobTopics.for_job("report_ready", chain.events, prefix=prefix),
        ),
        EmailJob(
            Mailer("127.0.0.1", smtp_server.port), sender="k@keel.localhost", topics=email_topics
        ),
    ]
    now = datetime.now(UTC)
    request = {
        "event_id": str(uuid.uuid4()),
        "type": "report.requested",
        "user_id": "u-cat",
        "occurred_at": (now + timedelta(seconds=1)).isoformat(),
        "kind": "activity",
        "period_start": (now - timedelta(days=7)).isoformat(),
        "period_end": now.isoformat(),
    }
    with RunningWorker(_worker(chain, handlers, done_store)):
        chain.send(producer, _signup("u-cat", "Cat", now))
        chain.send(producer, request)

        def ready_email() -> bool:
            chain.check_streams()
            return any(m.subject.endswith("report is ready") for m in smtp_server.outbox.messages())

        wait_for(ready_email, timeout=120, what=f"the report-ready email ({chain.streams.log})")
    [ready] = [m for m in smtp_server.outbox.messages() if "report" in m.subject]
    assert ready.envelope_to == ["cat@example.com"]
    assert ready.subject == "Your activity report is ready"
    [folder] = list((tmp_path / "reports" / "u-cat").iterdir())
    assert str(folder) in ready.text()
    rows = dict(csv.reader((folder / "report.csv").open()))
    assert rows["counts.user.signed_up"] == "1"  # the streams' user_activity view
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"
