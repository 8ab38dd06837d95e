"""The worker loop against the real broker: order per key with several runner threads,
commit after the side effect, retries through the retry topic, dead letters with their
headers, undecodable jobs, idempotency, backpressure, health endpoints and graceful stop.

Jobs here are JSON (JsonDecoder) so the loop is tested apart from Avro; the Avro path runs
end to end in test_jobs_e2e.py."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from confluent_kafka import Producer

from keel.consumers.errors import PermanentJobError, RetriableJobError
from keel.consumers.idempotency import DoneStore, PostgresDoneStore, RedisDoneStore
from keel.consumers.job import Job, JobHandler, JobTopics
from keel.consumers.retry import (
    H_ATTEMPT,
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TOPIC,
    H_REASON,
    RetryPolicy,
    header_map,
)
from keel.consumers.worker import Worker, WorkerConfig
from keel.offsets import slot_for
from keel.settings import KeelSettings
from tests.consumers.conftest import JsonDecoder, RunningWorker, drained, produce_json, read_all
from tests.polling import wait_for


class Recorder(JobHandler):
    """Records every call; a job's `fail` field scripts its failures:
    `retriable:N` fails N times then succeeds, `always` always fails retriably,
    `permanent` fails permanently."""

    name: ClassVar[str] = "recorder"

    def __init__(
        self, topics: JobTopics, gate: threading.Event | None = None, work_s: float = 0.0
    ) -> None:
        super().__init__(topics)
        self.work_s = work_s
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int, int]] = []  # (user, seq, attempt)
        self.done: list[str] = []
        self.gate = gate
        self.running = 0
        self.max_running = 0

    def handle(self, job: Job) -> Mapping[str, Any]:
        rec = job.record
        with self.lock:
            self.calls.append((rec["user_id"], rec.get("seq", 0), job.attempt))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(30)
            if self.work_s:
                time.sleep(self.work_s)  # the job's own work
            fail = str(rec.get("fail", ""))
            if fail == "permanent":
                raise PermanentJobError(f"bad job {rec['idempotency_key']}")
            if fail == "always":
                raise RetriableJobError("still down")
            if fail.startswith("retriable:") and job.attempt <= int(fail.split(":")[1]):
                raise RetriableJobError(f"down for attempt {job.attempt}")
            with self.lock:
                self.done.append(rec["idempotency_key"])
            return {"ok": True}
        finally:
            with self.lock:
                self.running -= 1


def make_worker(
    kafka_bootstrap: str,
    handler: JobHandler,
    group_id: str,
    store: DoneStore,
    **config: Any,
) -> Worker:
    settings = KeelSettings(bootstrap_servers=kafka_bootstrap)
    defaults: dict[str, Any] = {
        "concurrency": 4,
        "commit_interval_s": 0.1,
        "shutdown_timeout_s": 10,
        "policy": RetryPolicy((0.2, 0.2), jitter=0.1),
        "consumer_overrides": {"session.timeout.ms": 6000},
    }
    return Worker(
        [handler],
        settings=settings,
        decoder=JsonDecoder(),
        store=store,
        config=WorkerConfig(**{**defaults, **config}),
        http_port=0,
        group_ids={handler.name: group_id},
    )


def jobs_for(users: int, per_user: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"idempotency_key": str(uuid.uuid4()), "user_id": f"u{u}", "seq": s, **extra}
        for s in range(per_user)
        for u in range(users)
    ]


def test_jobs_run_in_order_per_key_and_offsets_follow(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    handler = Recorder(job_topics)
    jobs = jobs_for(users=20, per_user=10)
    produce_json(producer, job_topics.source, jobs)
    with RunningWorker(make_worker(kafka_bootstrap, handler, group_id, done_store)):
        wait_for(lambda: len(handler.done) == len(jobs), what="all jobs done")
        wait_for(lambda: drained(kafka_bootstrap, group_id, job_topics.source), what="commit")
    assert sorted(handler.done) == sorted(j["idempotency_key"] for j in jobs)
    for user in {j["user_id"] for j in jobs}:
        seqs = [seq for u, seq, _ in handler.calls if u == user]
        assert seqs == sorted(seqs), f"{user} out of order: {seqs}"


def test_retriable_failures_come_back_through_the_retry_topic(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    handler = Recorder(job_topics)
    flaky = jobs_for(users=3, per_user=1, fail="retriable:2")
    fine = jobs_for(users=5, per_user=2)
    produce_json(producer, job_topics.source, flaky + fine)
    worker = make_worker(kafka_bootstrap, handler, group_id, done_store)
    with RunningWorker(worker):
        wait_for(lambda: len(handler.done) == len(flaky) + len(fine), what="all jobs done")
        wait_for(lambda: drained(kafka_bootstrap, group_id, job_topics.retry), what="retry drained")
        wait_for(
            lambda: drained(kafka_bootstrap, group_id, job_topics.source), what="source drained"
        )
        metrics = worker.metrics.render().decode()
    for job in flaky:  # three attempts each: two failures, one success
        attempts = [a for u, _, a in handler.calls if u == job["user_id"] and _ == job["seq"]]
        assert sorted(set(attempts)) == [1, 2, 3]
    assert sorted(handler.done) == sorted(j["idempotency_key"] for j in flaky + fine)
    assert 'keel_jobs_retried_total{job_type="recorder"} 6.0' in metrics
    assert 'keel_jobs_done_total{job_type="recorder"} 13.0' in metrics


def test_permanent_and_exhausted_failures_become_dead_letters_with_headers(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    handler = Recorder(job_topics)
    bad = jobs_for(users=1, per_user=1, fail="permanent")
    hopeless = [{**jobs_for(users=1, per_user=1)[0], "user_id": "h", "fail": "always"}]
    after = jobs_for(users=2, per_user=2)
    produce_json(producer, job_topics.source, bad + hopeless + after)
    with RunningWorker(make_worker(kafka_bootstrap, handler, group_id, done_store)):
        dead = read_all(kafka_bootstrap, job_topics.dlq, 2)
        wait_for(lambda: len(handler.done) == len(after), what="the jobs after them")
        wait_for(lambda: drained(kafka_bootstrap, group_id, job_topics.source), what="commit")
    by_reason = {header_map(m.headers())[H_REASON]: m for m in dead}
    permanent = header_map(by_reason["permanent"].headers())
    assert permanent[H_ATTEMPT] == "1"
    assert "bad job" in permanent[H_ERROR]
    assert permanent[H_ORIG_TOPIC] == job_topics.source
    assert (
        json.loads(by_reason["permanent"].value())["idempotency_key"] == bad[0]["idempotency_key"]
    )
    exhausted = header_map(by_reason["retries_exhausted"].headers())
    assert exhausted[H_ATTEMPT] == "3"  # ladder of two retries
    assert exhausted[H_ORIG_TOPIC] == job_topics.source  # not the retry topic
    assert int(exhausted[H_ORIG_PARTITION]) >= 0 and int(exhausted[H_ORIG_OFFSET]) >= 0
    assert by_reason["retries_exhausted"].key() == b"h"


def test_undecodable_job_goes_to_dead_letters_and_the_worker_goes_on(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    handler = Recorder(job_topics)
    producer.produce(job_topics.source, key=b"u0", value=b"\x00\x00\x00\x00\x07garbage")
    good = jobs_for(users=1, per_user=3)
    produce_json(producer, job_topics.source, good)
    with RunningWorker(make_worker(kafka_bootstrap, handler, group_id, done_store)):
        [dead] = read_all(kafka_bootstrap, job_topics.dlq, 1)
        wait_for(lambda: len(handler.done) == 3, what="the good jobs")
    headers = header_map(dead.headers())
    assert headers[H_REASON] == "undecodable"
    assert dead.value() == b"\x00\x00\x00\x00\x07garbage"  # the original bytes, untouched


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_done_key_is_not_done_again(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    handler = Recorder(job_topics)
    store: DoneStore
    if kind == "redis":
        store = RedisDoneStore(request.getfixturevalue("redis_url"), ttl_seconds=300)
    else:
        store = PostgresDoneStore(request.getfixturevalue("postgres_dsn"))
    twice = jobs_for(users=1, per_user=1)
    produce_json(producer, job_topics.source, twice + twice + jobs_for(users=2, per_user=1))
    worker = make_worker(kafka_bootstrap, handler, group_id, store=store)
    with RunningWorker(worker):
        wait_for(lambda: drained(kafka_bootstrap, group_id, job_topics.source), what="commit")
    assert handler.done.count(twice[0]["idempotency_key"]) == 1
    assert len(handler.done) == 3
    assert store.outcome("recorder", twice[0]["idempotency_key"]) == {"ok": True}
    # a second worker (a restart) reading the same jobs again does not redo them
    again = Recorder(job_topics)
    with RunningWorker(make_worker(kafka_bootstrap, again, f"{group_id}-2", store=store)):
        wait_for(
            lambda: drained(kafka_bootstrap, f"{group_id}-2", job_topics.source), what="commit"
        )
    assert again.done == []


def test_in_flight_jobs_are_bounded_and_health_endpoints_answer(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    gate = threading.Event()
    handler = Recorder(job_topics, gate=gate)
    produce_json(producer, job_topics.source, jobs_for(users=30, per_user=2))
    worker = make_worker(
        kafka_bootstrap, handler, group_id, done_store, max_in_flight=5, concurrency=2
    )
    with RunningWorker(worker):
        runner = worker.runners[0]
        wait_for(lambda: runner.loop.paused, what="backpressure to pause the partitions")
        assert runner.tracker.in_flight() <= 5
        assert handler.max_running <= 2
        base = f"http://127.0.0.1:{worker.health.port}"  # type: ignore[union-attr]
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + path, timeout=5) as response:
                assert response.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"keel_jobs_in_flight" in response.read()
        gate.set()
        wait_for(lambda: len(handler.done) == 60, what="all jobs once the gate opens")


def test_graceful_stop_finishes_in_flight_jobs_and_commits(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    gate = threading.Event()
    handler = Recorder(job_topics, gate=gate)
    # one user per runner thread, so that four jobs are running when the stop comes
    users = {slot_for(f"u{i}".encode(), 4): f"u{i}" for i in range(200)}
    jobs = [{"idempotency_key": str(uuid.uuid4()), "user_id": users[s]} for s in range(4)]
    produce_json(producer, job_topics.source, jobs)
    running = RunningWorker(
        make_worker(kafka_bootstrap, handler, group_id, done_store, concurrency=4)
    )
    worker = running.__enter__()
    try:
        wait_for(lambda: handler.running == 4, what="four jobs running")
        worker.stop()  # what SIGTERM does
        assert running.thread.is_alive()  # still waiting for the in-flight jobs
    finally:
        gate.set()
        worker.stop()
        running.thread.join(timeout=30)
    assert not running.thread.is_alive()
    assert len(handler.done) == 4
    assert drained(kafka_bootstrap, group_id, job_topics.source)


def test_a_second_worker_joining_takes_partitions_without_losing_or_repeating(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    redis_url: str,
) -> None:
    store = RedisDoneStore(redis_url, ttl_seconds=300)
    first, second = Recorder(job_topics, work_s=0.01), Recorder(job_topics, work_s=0.01)
    jobs = jobs_for(users=60, per_user=60)  # 3600 jobs of 10 ms: ~9 s of work for one
    produce_json(producer, job_topics.source, jobs)
    with RunningWorker(make_worker(kafka_bootstrap, first, group_id, store, max_in_flight=40)):
        wait_for(lambda: first.done, what="the first worker to finish jobs")
        # the second joins while the first has jobs in flight: the rebalance lets them
        # finish and commits them before the partitions move
        with RunningWorker(make_worker(kafka_bootstrap, second, group_id, store, max_in_flight=40)):
            wait_for(
                lambda: drained(kafka_bootstrap, group_id, job_topics.source),
                timeout=60,
                what="commit",
            )
    assert second.done, "the second worker took no partition"
    done = first.done + second.done
    assert sorted(done) == sorted(j["idempotency_key"] for j in jobs)  # each exactly once


def test_a_retry_waiting_for_its_due_time_blocks_no_other_job(
    kafka_bootstrap: str,
    job_topics: JobTopics,
    producer: Producer,
    group_id: str,
    done_store: DoneStore,
) -> None:
    handler = Recorder(job_topics)
    stuck = [{**jobs_for(users=1, per_user=1)[0], "user_id": "stuck", "fail": "always"}]
    later = jobs_for(users=5, per_user=3)
    produce_json(producer, job_topics.source, stuck)
    worker = make_worker(
        kafka_bootstrap, handler, group_id, done_store, policy=RetryPolicy((60.0,), jitter=0.0)
    )
    with RunningWorker(worker):
        runner = worker.runners[0]
        wait_for(lambda: len(runner.delayed) == 1, what="the retry to be held until due")
        produce_json(producer, job_topics.source, later)
        wait_for(lambda: len(handler.done) == len(later), what="the later jobs")
        wait_for(lambda: drained(kafka_bootstrap, group_id, job_topics.source), what="commit")
        # the held retry is the only thing not committed
        assert not drained(kafka_bootstrap, group_id, job_topics.retry)
        assert len(runner.delayed) == 1
    assert [a for user, _, a in handler.calls if user == "stuck"] == [1]  # not due yet
