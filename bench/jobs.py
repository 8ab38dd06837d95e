"""Job worker throughput: jobs/s through Keel's job framework (consumer group, Avro decoding
through the registry, routing by key to runner threads, per-partition commit tracking) with
a no-op handler, against a plain confluent-kafka consume-and-commit loop over the same
pre-filled job topic, alternating who goes first. Also the framework with the Redis
idempotency store on (one MGET per batch and one SET per job), as a second figure.

    .venv/bin/python -m bench.jobs [--quick] [--runs 5] [--jobs 200000] [--no-redis]

Needs the broker (KEEL_BOOTSTRAP_SERVERS) and a schema registry (KEEL_SCHEMA_REGISTRY_URL).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException

from bench.common import drop_topics, emit, fresh_topic, machine, summary
from keel.consumers.decoding import avro_decoder
from keel.consumers.idempotency import DoneStore, RedisDoneStore
from keel.consumers.job import Job, JobHandler, JobTopics
from keel.consumers.worker import Worker, WorkerConfig
from keel.kafka import make_producer
from keel.settings import get_settings

PARTITIONS = 3


class Noop(JobHandler):
    name = "bench"
    idempotent = False  # the bare framework: no store round trips

    def __init__(self, topics: JobTopics, expected: int) -> None:
        super().__init__(topics)
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def handle(self, job: Job) -> Mapping[str, Any] | None:
        with self.lock:
            if self.count == 0:
                self.first = time.perf_counter()
            self.count += 1
            if self.count >= self.expected:
                self.last = time.perf_counter()
                self.finished.set()
        return None


class IdempotentNoop(Noop):
    idempotent = True


def fill(topic: str, jobs: int) -> None:
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    settings = get_settings()
    serde = AvroSerde(RegistryClient(settings.schema_registry_url))
    producer = make_producer(settings, **{"linger.ms": 20, "batch.size": 262144})
    now = datetime.now(UTC)
    for i in range(jobs):
        user = f"user-{i % 5000}"
        record = {
            "job_id": str(uuid.uuid4()),
            "idempotency_key": str(uuid.uuid4()),
            "created_at": now,
            "user_id": user,
            "template": "welcome",
            "to": f"{user}@example.com",
            "data_json": '{"name": "Ann"}',
        }
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=serde.encode("job.email", record))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("filling the topic failed")


def plain_loop(topic: str, jobs: int, decode: bool) -> float:
    """A hand-written job consumer: consume in batches, decode each job with the same serde
    and call the same no-op (`decode=True`), commit each batch asynchronously. With
    `decode=False` it only counts messages: librdkafka's ceiling, no per-job Python work."""
    settings = get_settings()
    decoder = avro_decoder(settings)
    handler = Noop(JobTopics(topic, "-", "-"), jobs)
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": f"bench-plain-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe([topic])
    seen, first = 0, 0.0
    try:
        while seen < jobs:
            batch = consumer.consume(num_messages=500, timeout=1.0)
            if not batch:
                continue
            if not first:
                first = time.perf_counter()
            for msg in batch:
                if msg.error() is not None:
                    continue
                seen += 1
                if decode:
                    record = decoder.decode(msg.value() or b"")
                    handler.handle(
                        Job("bench", record, msg.key(), topic, msg.partition() or 0,
                            msg.offset() or 0, msg.timestamp()[1])
                    )  # fmt: skip
            consumer.commit(asynchronous=True)
        elapsed = time.perf_counter() - first
        with contextlib.suppress(KafkaException):  # nothing new since the last async commit
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return jobs / elapsed


def framework(topic: str, jobs: int, store: DoneStore | None) -> float:
    """Jobs/s through a Worker with a no-op handler, over the first `jobs` jobs."""
    settings = get_settings()
    handler_cls = IdempotentNoop if store is not None else Noop
    name = uuid.uuid4().hex[:8]
    topics = JobTopics(topic, f"bench-jobs-{name}.retry", f"bench-jobs-{name}.dlq")
    handler = handler_cls(topics, jobs)
    worker = Worker(
        [handler],
        settings=settings,
        decoder=avro_decoder(settings),
        store=store,
        config=WorkerConfig.from_settings(settings),
        http_port=-1,
        group_ids={handler.name: f"bench-framework-{name}"},
        topic_partitions=1,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        if not handler.finished.wait(300):
            raise RuntimeError(f"framework handled {handler.count} of {jobs} jobs")
    finally:
        worker.stop()
        thread.join(60)
        drop_topics(topics.retry, topics.dlq)
    return jobs / (handler.last - handler.first)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    import socket

    from keel.local.services import RedisService
    from keel.settings import KeelSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    url = f"redis://127.0.0.1:{port}/0"
    service = RedisService(KeelSettings(home=home, redis_url=url))
    service.start(progress=lambda _m: None)
    try:
        yield url
    finally:
        service.stop(progress=lambda _m: None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="under a minute: 3 runs of 20k jobs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--no-redis", action="store_true", help="skip the idempotent variant")
    args = parser.parse_args()
    runs, jobs = (3, 20_000) if args.quick else (args.runs, args.jobs)

    plain, bare, framework_rates, idem = [], [], [], []
    with contextlib.ExitStack() as stack:
        store = None
        if not args.no_redis:
            store = RedisDoneStore(stack.enter_context(private_redis()), ttl_seconds=3600)
        for run in range(1, runs + 1):
            topic = fresh_topic("jobs", PARTITIONS)
            try:
                fill(topic, jobs)
                order: list[tuple[str, Any, list[float]]] = [
                    ("plain", lambda t=topic: plain_loop(t, jobs, decode=True), plain),
                    ("framework", lambda t=topic: framework(t, jobs, None), framework_rates),
                ]
                if store is not None:
                    # a store round trip per job is slower: time the first 20k jobs only
                    idem_jobs = min(jobs, 20_000)
                    order.append(
                        ("idempotent", lambda t=topic, n=idem_jobs: framework(t, n, store), idem)
                    )
                order.append(("bare-loop", lambda t=topic: plain_loop(t, jobs, decode=False), bare))
                for name, fn, rates in order if run % 2 else reversed(order):
                    rate = fn()
                    rates.append(rate)
                    print(f"run {run}/{runs} {name:<10} {rate:>10,.0f} jobs/s", file=sys.stderr)
            finally:
                drop_topics(topic)

    def median_ratio(num: list[float], den: list[float]) -> float:
        ratios = sorted(a / b for a, b in zip(num, den, strict=True))
        return round(ratios[len(ratios) // 2], 3)

    result: dict[str, Any] = {
        "benchmark": "jobs",
        "machine": machine(),
        "jobs": jobs,
        "partitions": PARTITIONS,
        "concurrency": get_settings().jobs_concurrency,
        "plain_loop_decode_jobs_s": summary(plain),
        "plain_loop_no_decode_msgs_s": summary(bare),
        "framework_noop_jobs_s": summary(framework_rates),
        "ratio": median_ratio(framework_rates, plain),
        "ratio_runs": summary([f / p for f, p in zip(framework_rates, plain, strict=True)]),
        "ratio_vs_no_decode_loop": median_ratio(framework_rates, bare),
    }
    if idem:
        result["framework_noop_redis_idempotency_jobs_s"] = summary(idem)
        result["ratio_with_redis_idempotency"] = median_ratio(idem, plain)
    emit(result)


if __name__ == "__main__":
    main()
