"""Scenario 6: a job worker SIGKILLed between the side effect and the commit sends no
second email.

`keel jobs worker email` runs as a process on the shared 3-broker cluster (job topics with
replication 3, min ISR 2), sending to a real SMTP server whose outbox the test counts. Each
round a fresh batch of email jobs arrives; the worker sends every email and records every
done key, but never commits (its commit interval is an hour), and is SIGKILLed. The next
worker therefore reads every job of every round again. At the end a worker that commits
drains the topic: the outbox must hold exactly one message per job (by Message-ID, which
Keel derives from the job's idempotency key).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keel.consumers.idempotency import RedisDoneStore
from keel.consumers.job import JobTopics
from keel.consumers.mail.server import Outbox, OutboxServer
from keel.kafka import delete_topics, make_producer
from keel.local.ports import free_port
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from tests.consumers.conftest import drained
from tests.faults.cluster import FaultCluster, FaultRow, repetitions
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess

pytestmark = [
    pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)
]  # fmt: skip
JOBS_PER_ROUND = 30


def _email_job(n: int) -> dict[str, Any]:
    user = f"u-{n % 7}"
    return {
        "job_id": str(uuid.uuid4()), "idempotency_key": str(uuid.uuid4()),
        "created_at": datetime.now(UTC), "user_id": user, "template": "welcome",
        "to": f"user{n}@example.com", "data_json": json.dumps({"user_id": user}),
    }  # fmt: skip


def test_job_worker_sigkilled_between_email_and_commit(
    healed: FaultCluster, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster = healed
    rounds = repetitions(request.config)
    prefix = f"faults-{uuid.uuid4().hex[:8]}."
    topics = JobTopics.for_job("email", prefix=prefix)
    for name in (topics.source, topics.retry, topics.dlq):
        cluster.create_topic(name)
    cluster.assert_meaningful(topics.source)
    group = f"{prefix}keel.jobs.email"
    smtp = OutboxServer(Outbox(tmp_path / "outbox"), port=0)
    smtp.start()
    store = RedisDoneStore(redis_url)
    env = {
        **os.environ, "KEEL_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": cluster.registry_url, "KEEL_JOBS_TOPIC_PREFIX": prefix,
        "KEEL_REDIS_URL": redis_url, "KEEL_SMTP_PORT": str(smtp.port),
        "KEEL_JOBS_SESSION_TIMEOUT_MS": "6000", "KEEL_HOME": str(tmp_path / "home"),
    }  # fmt: skip
    workers: list[KeelProcess] = []

    def start(**extra: str) -> KeelProcess:
        port = free_port()
        worker = KeelProcess.start(
            [KEEL, "jobs", "worker", "email", "--http-port", str(port)], {**env, **extra},
            tmp_path / f"worker-{port}.log", port=port, name=f"the email worker on {port}",
        )  # fmt: skip
        workers.append(worker)
        return worker

    serde = AvroSerde(RegistryClient(cluster.registry_url))
    producer = make_producer(**{"bootstrap.servers": cluster.bootstrap})
    jobs: list[dict[str, Any]] = []
    try:
        for n in range(1, rounds + 1):
            worker = start(KEEL_JOBS_COMMIT_INTERVAL_MS="3600000")  # never commits in time
            batch = [_email_job(len(jobs) + i) for i in range(JOBS_PER_ROUND)]
            for job in batch:
                value = serde.encode("job.email", job)
                producer.produce(topics.source, key=job["user_id"].encode(), value=value)
            assert producer.flush(30) == 0
            jobs += batch
            keys = [j["idempotency_key"] for j in jobs]
            wait_for(
                lambda k=keys: len(store.done_keys("email", k)) == len(k), 180,
                f"every email of round {n} sent and its done key recorded",
            )  # fmt: skip
            # The kill falls between the side effect and the commit: nothing committed.
            assert not drained(cluster.bootstrap, group, topics.source)
            worker.kill()
        final = start()
        wait_for(lambda: drained(cluster.bootstrap, group, topics.source), 180, "the drain")
        assert final.stop_gracefully(30) == 0
    finally:
        for worker in workers:
            if worker.alive():
                print(f"--- {worker.name}:\n{worker.tail(20)}")
            worker.kill()
        smtp.stop()
        delete_topics(cluster.admin, [topics.source, topics.retry, topics.dlq])
    sent = Counter(m.message_id for m in smtp.outbox.messages())
    expected = {f"<{j['idempotency_key']}.welcome@keel.jobs>" for j in jobs}
    lost = expected - set(sent)
    twice = {m for m, c in sent.items() if c > 1}
    FaultRow(
        "6. job worker SIGKILLed between the email and the commit", rounds, len(jobs),
        len(lost), len(twice), 0, f"{sum(sent.values())} emails in the SMTP outbox",
    ).record()  # fmt: skip
    assert not lost, f"{len(lost)} jobs sent no email"
    assert not twice, f"{len(twice)} emails sent twice, e.g. {sorted(twice)[:2]}"
    assert set(sent) == expected
