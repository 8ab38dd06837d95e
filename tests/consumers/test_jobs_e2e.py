"""Email and report jobs end to end: Avro job events through Keel's registry on the real
broker, Redis as the idempotency store, a real SMTP server on loopback, and the worker as the
console script for the crash test."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from keel.consumers.decoding import avro_decoder
from keel.consumers.handlers import EmailJob, Emitter, ReportJob, ReportReadyTrigger
from keel.consumers.idempotency import RedisDoneStore
from keel.consumers.job import JobHandler, JobTopics
from keel.consumers.mail.server import Outbox, OutboxServer
from keel.consumers.mail.smtp import Mailer
from keel.consumers.reports import ReportStore, ViewsClient
from keel.consumers.retry import H_REASON, RetryPolicy, header_map
from keel.consumers.worker import Worker, WorkerConfig
from keel.local.ports import free_port as _free_port
from keel.settings import KeelSettings
from tests.consumers.conftest import RefusingHandler, RunningWorker, drained, read_all
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel

SENDER = "Keel <no-reply@keel.localhost>"


@pytest.fixture
def settings(kafka_bootstrap: str, schema_registry: str, redis_url: str) -> KeelSettings:
    return KeelSettings(
        bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry, redis_url=redis_url
    )


@pytest.fixture
def serde(settings: KeelSettings) -> Any:
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    return AvroSerde(RegistryClient(settings.schema_registry_url))


def email_job(template: str, to: str | None, data: dict[str, Any], **over: Any) -> dict[str, Any]:
    key = str(uuid.uuid4())
    return {
        "job_id": str(uuid.uuid4()),
        "idempotency_key": key,
        "created_at": datetime.now(UTC),
        "user_id": data.get("user_id", "u-1"),
        "template": template,
        "to": to,
        "data_json": json.dumps(data),
        **over,
    }


def produce(
    producer: Producer, serde: Any, topic: str, event_type: str, records: list[dict[str, Any]]
) -> None:
    for record in records:
        producer.produce(
            topic, key=str(record["user_id"]).encode(), value=serde.encode(event_type, record)
        )
    assert producer.flush(30) == 0


def worker_for(
    settings: KeelSettings,
    handlers: list[JobHandler],
    store: RedisDoneStore,
    group: str,
    **config: Any,
) -> Worker:
    defaults: dict[str, Any] = {
        "concurrency": 2,
        "commit_interval_s": 0.1,
        "shutdown_timeout_s": 10,
        "policy": RetryPolicy((0.3, 0.3, 0.3, 0.3), jitter=0.2),
        "consumer_overrides": {"session.timeout.ms": 6000},
    }
    return Worker(
        handlers,
        settings=settings,
        decoder=avro_decoder(settings),
        store=store,
        config=WorkerConfig(**{**defaults, **config}),
        http_port=0,
        group_ids={h.name: f"{group}-{h.name}" for h in handlers},
    )


def test_one_welcome_email_even_when_the_job_comes_twice(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    job_topics: JobTopics,
    producer: Producer,
    smtp_server: OutboxServer,
    group_id: str,
) -> None:
    job = email_job("welcome", "ann@example.com", {"user_id": "u-ann", "name": "Ann"})
    job["user_id"] = "u-ann"
    produce(
        producer, serde, job_topics.source, "job.email", [job, {**job, "job_id": str(uuid.uuid4())}]
    )
    handler = EmailJob(Mailer("127.0.0.1", smtp_server.port), sender=SENDER, topics=job_topics)
    with RunningWorker(worker_for(settings, [handler], done_store, group_id)):
        wait_for(smtp_server.outbox.messages, what="the welcome email")
        wait_for(
            lambda: drained(settings.bootstrap_servers, f"{group_id}-email", job_topics.source),
            what="commit",
        )
    [mail] = smtp_server.outbox.messages()
    assert mail.envelope_to == ["ann@example.com"]
    assert mail.subject == "Welcome to Keel, Ann!"
    assert mail.message["X-Keel-Idempotency-Key"] == job["idempotency_key"]


def test_order_receipt_carries_the_order(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    job_topics: JobTopics,
    producer: Producer,
    smtp_server: OutboxServer,
    group_id: str,
) -> None:
    order = {
        "user_id": "u-bob",
        "order_id": "o-42",
        "items": [{"product_id": "Mug", "quantity": 3, "unit_price": "4.00"}],
        "total": "12.00",
        "currency": "EUR",
    }
    produce(
        producer,
        serde,
        job_topics.source,
        "job.email",
        [email_job("order_receipt", "bob@example.com", order)],
    )
    handler = EmailJob(Mailer("127.0.0.1", smtp_server.port), sender=SENDER, topics=job_topics)
    with RunningWorker(worker_for(settings, [handler], done_store, group_id)):
        [mail] = wait_for(smtp_server.outbox.messages, what="the receipt")
    assert mail.subject == "Your receipt for order o-42"
    body = mail.text()
    assert "3 x Mug  4.00 EUR" in body and "Total: 12.00 EUR" in body


def test_smtp_refusing_for_a_while_then_accepting_delivers_each_email_once(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    job_topics: JobTopics,
    producer: Producer,
    tmp_path: Path,
    group_id: str,
) -> None:
    outbox = Outbox(tmp_path / "box")
    refusing = RefusingHandler(outbox, refuse=4)
    jobs = [
        email_job("welcome", f"user{i}@example.com", {"user_id": f"u{i}"}, user_id=f"u{i}")
        for i in range(3)
    ]
    produce(producer, serde, job_topics.source, "job.email", jobs)
    with OutboxServer(outbox, port=0, handler=refusing) as server:
        handler = EmailJob(Mailer("127.0.0.1", server.port), sender=SENDER, topics=job_topics)
        worker = worker_for(settings, [handler], done_store, group_id)
        with RunningWorker(worker):
            wait_for(lambda: len(outbox.messages()) == 3, what="three emails")
            group = f"{group_id}-email"
            wait_for(
                lambda: drained(settings.bootstrap_servers, group, job_topics.retry),
                what="the retry topic to drain",
            )
            wait_for(
                lambda: drained(settings.bootstrap_servers, group, job_topics.source),
                what="commit",
            )
            metrics = worker.metrics.render().decode()
    assert refusing.refused == 4
    assert sorted(m.envelope_to[0] for m in outbox.messages()) == [
        f"user{i}@example.com" for i in range(3)
    ]
    assert 'keel_jobs_retried_total{job_type="email"} 4.0' in metrics


def test_undecodable_job_is_dead_lettered_and_the_next_one_sent(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    job_topics: JobTopics,
    producer: Producer,
    smtp_server: OutboxServer,
    group_id: str,
) -> None:
    producer.produce(job_topics.source, key=b"u-1", value=b"\x00\x00\x0f\x42\x40not avro")
    produce(
        producer,
        serde,
        job_topics.source,
        "job.email",
        [email_job("welcome", "c@example.com", {"user_id": "u-1"})],
    )
    handler = EmailJob(Mailer("127.0.0.1", smtp_server.port), sender=SENDER, topics=job_topics)
    with RunningWorker(worker_for(settings, [handler], done_store, group_id)):
        [dead] = read_all(settings.bootstrap_servers, job_topics.dlq, 1)
        wait_for(smtp_server.outbox.messages, what="the good job's email")
    assert header_map(dead.headers())[H_REASON] == "undecodable"


class ViewsApi:
    """The streams query API's contract (`GET /v1/views/<view>/<key>` -> the view as JSON) on
    loopback, serving fixed views: the report job is the subject here, not the streams."""

    def __init__(self, views: dict[tuple[str, str], dict[str, Any]]) -> None:
        outer = views

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.split("/")
                value = (
                    outer.get((parts[3], urllib.request.unquote(parts[4])))
                    if len(parts) == 5
                    else None
                )
                body = json.dumps(value if value is not None else {"error": "no such key"}).encode()
                self.send_response(200 if value is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_requested_report_is_stored_and_its_ready_email_arrives(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    new_topic: Callable[..., str],
    producer: Producer,
    smtp_server: OutboxServer,
    tmp_path: Path,
    group_id: str,
) -> None:
    report_topics = JobTopics(
        new_topic("jobs-report", 3), new_topic("report-retry", 3), new_topic("report-dlq")
    )
    email_topics = JobTopics(
        new_topic("jobs-email", 3), new_topic("email-retry", 3), new_topic("email-dlq")
    )
    events = new_topic("events", 3)
    ready_topics = JobTopics(events, new_topic("ready-retry", 3), new_topic("ready-dlq"))
    view = {
        "counts": {"page.viewed": 7, "order.placed": 2},
        "orders": 2,
        "lifetime_value": {"EUR": "31.50"},
    }
    api = ViewsApi({("user_activity", "u-rep"): view})
    reports = ReportStore(tmp_path / "reports")
    handlers: list[JobHandler] = [
        ReportJob(
            reports,
            ViewsClient(api.url),
            Emitter(settings, serde),
            events_topic=events,
            topics=report_topics,
        ),
        ReportReadyTrigger(
            Emitter(settings, serde), email_topic=email_topics.source, topics=ready_topics
        ),
        EmailJob(Mailer("127.0.0.1", smtp_server.port), sender=SENDER, topics=email_topics),
    ]
    end = datetime.now(UTC)
    job = {
        "job_id": str(uuid.uuid4()),
        "idempotency_key": str(uuid.uuid4()),
        "created_at": end,
        "user_id": "u-rep",
        "kind": "activity",
        "period_start": end - timedelta(days=30),
        "period_end": end,
        "to": "rep@example.com",
    }
    # other records and poison on the shared events topic are not the trigger's business
    other = {**email_job("welcome", None, {}), "user_id": "u-rep"}
    produce(producer, serde, events, "job.email", [other])
    producer.produce(events, key=b"u-rep", value=b"not avro at all")
    produce(producer, serde, report_topics.source, "job.report", [job])
    worker = worker_for(settings, handlers, done_store, group_id)
    try:
        with RunningWorker(worker):
            [mail] = wait_for(smtp_server.outbox.messages, timeout=60, what="the ready email")
            metrics = worker.metrics.render().decode()
    finally:
        api.close()
    assert 'keel_jobs_skipped_total{job_type="report_ready"} 2.0' in metrics
    assert "keel_jobs_dead_lettered_total{" not in metrics
    [*_, ready] = read_all(settings.bootstrap_servers, events, 3)
    ready_type, ready_event = serde.decode_event(ready.value())
    assert ready_type == "report.ready"
    location = Path(ready_event["location"])
    assert ready_event["formats"] == ["csv", "png"] and ready_event["to"] == "rep@example.com"
    rows = list(csv.reader((location / "report.csv").open()))
    assert ["counts.page.viewed", "7"] in rows and ["lifetime_value.EUR", "31.5"] in rows
    assert (location / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert mail.subject == "Your activity report is ready"
    assert str(location) in mail.text()
    assert mail.message["X-Keel-Idempotency-Key"] == str(ready_event["event_id"])


@dataclass
class EmailJobs:
    """Email job topics of one test (own prefix) and the environment for a `keel jobs`
    subprocess that uses them."""

    topics: JobTopics
    env: dict[str, str]
    keel: str = KEEL


@pytest.fixture
def email_jobs(settings: KeelSettings, admin: Any) -> Iterator[EmailJobs]:
    from keel.kafka import delete_topics

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    topics = JobTopics.for_job("email", prefix=prefix)
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KEEL_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "KEEL_JOBS_TOPIC_PREFIX": prefix,
    }
    yield EmailJobs(topics, env)
    delete_topics(admin, [topics.source, topics.retry, topics.dlq])


def test_worker_killed_between_sending_and_committing_sends_no_second_email(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    admin: Any,
    producer: Producer,
    smtp_server: OutboxServer,
    email_jobs: EmailJobs,
    tmp_path: Path,
) -> None:
    topics, keel = email_jobs.topics, email_jobs.keel
    group = f"{email_jobs.env['KEEL_JOBS_TOPIC_PREFIX']}keel.jobs.email"
    env = {
        **email_jobs.env,
        "KEEL_REDIS_URL": settings.redis_url,
        "KEEL_SMTP_PORT": str(smtp_server.port),
        "KEEL_JOBS_SESSION_TIMEOUT_MS": "6000",
        "KEEL_HOME": str(tmp_path / "home"),
    }

    def start(**extra: str) -> KeelProcess:
        port = _free_port()
        return KeelProcess.start(
            [keel, "jobs", "worker", "email", "--http-port", str(port)],
            {**env, **extra},
            tmp_path / f"worker-{port}.log",
            port=port,
            name=f"the email worker on {port}",
        )

    # the first worker never reaches its commit: it is killed once the email is sent
    first = start(KEEL_JOBS_COMMIT_INTERVAL_MS="3600000")
    try:
        wait_for(lambda: admin.list_topics(timeout=5).topics.get(topics.source), what="topics")
        job = email_job("welcome", "dee@example.com", {"user_id": "u-dee"}, user_id="u-dee")
        produce(producer, serde, topics.source, "job.email", [job])
        wait_for(smtp_server.outbox.messages, timeout=60, what="the email")
        wait_for(lambda: done_store.outcome("email", job["idempotency_key"]), what="the done key")
        first.kill()
        assert not drained(settings.bootstrap_servers, group, topics.source)  # not committed
        second = start()
        try:
            wait_for(
                lambda: drained(settings.bootstrap_servers, group, topics.source),
                timeout=90,
                what="the restarted worker to commit",
            )
        finally:
            assert second.stop_gracefully(30) == 0  # a graceful stop exits cleanly
        assert len(smtp_server.outbox.messages()) == 1
    finally:
        first.kill()


def test_dead_letters_are_listed_and_replayed_once_through_the_cli(
    settings: KeelSettings,
    serde: Any,
    done_store: RedisDoneStore,
    producer: Producer,
    smtp_server: OutboxServer,
    email_jobs: EmailJobs,
) -> None:
    topics, env = email_jobs.topics, email_jobs.env
    prefix = env["KEEL_JOBS_TOPIC_PREFIX"]
    handler = EmailJob(Mailer("127.0.0.1", smtp_server.port), sender=SENDER, topics=topics)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_keel("jobs", "dlq", "email", *args, env=env, timeout=120)

    job = email_job("welcome", None, {"user_id": "u-1"})  # no address: permanent
    with RunningWorker(worker_for(settings, [handler], done_store, prefix)):
        produce(producer, serde, topics.source, "job.email", [job])
        read_all(settings.bootstrap_servers, topics.dlq, 1)
    listed = cli("--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["reason"] == "permanent" and "'to' is null" in row["error"]
    assert row["origin"].startswith(f"{topics.source}/")
    first = cli("--replay")
    assert first.returncode == 0, first.stderr
    assert "replayed 1 dead letter(s)" in first.stdout
    again = cli("--replay")
    assert "replayed 0 dead letter(s)" in again.stdout  # each dead letter once
    back = read_all(settings.bootstrap_servers, topics.source, 2)
    [replayed] = [m for m in back if "keel.replayed_from" in header_map(m.headers())]
    source = header_map(replayed.headers())["keel.replayed_from"]
    assert source.startswith(f"{topics.dlq}/") and source.endswith("@0")
    assert {m.value() for m in back} == {replayed.value()}  # the original bytes
