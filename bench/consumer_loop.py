"""The consumer loop alone, before any sink work: records/s from a pre-filled topic through
Sentry's arroyo (`StreamProcessor`, a `RunTask` step, `CommitOffsets`, commits once a
second: its documented shape) against the loop Keel's sinks run (librdkafka's batch
`consume(500)`, the effect per batch, a synchronous offset commit per batch), on the same
topic, same consumer settings (keel.kafka's), same trivial effect (count the bytes), in the
same invocation, runs alternating who goes first. This is the measurement behind "adopt
arroyo where it serves" (README, One consumer runtime): what a sink pays the loop per record.

    .venv/bin/python -m bench.consumer_loop [--quick] [--runs 5] [--records 200000]

Needs the broker (KEEL_BOOTSTRAP_SERVERS) and sentry-arroyo (the `dev` extra). Each run
uses a fresh consumer group; the time runs from the first record to the last one's effect
(group join left out for both).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import TopicPartition

from bench.common import drop_topics, emit, fresh_topic, machine, summary
from keel.kafka import CONSUMER_DEFAULTS, make_consumer, make_producer
from keel.settings import get_settings

PARTITIONS = 3
BATCH = 500


def fill(topic: str, records: int, size: int = 200) -> None:
    producer = make_producer(**{"linger.ms": 20})
    value = b"x" * size
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value, key=str(i % 1000).encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("the topic was not filled")


def keel_loop(topic: str, records: int) -> float:
    """What pgsink's and archive's loops do around their effect."""
    consumer = make_consumer(f"bench-loop-keel-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    seen, total, started = 0, 0, 0.0
    try:
        while seen < records:
            messages = consumer.consume(BATCH, 0.5)
            if not messages:
                continue
            if not started:
                started = time.perf_counter()
            offsets: dict[tuple[str, int], int] = {}
            for msg in messages:
                if msg.error() is not None:
                    continue
                total += len(msg.value() or b"")  # the effect
                offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                seen += 1
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        return time.perf_counter() - started
    finally:
        consumer.close()


def arroyo_loop(topic: str, records: int) -> float:
    """arroyo's StreamProcessor with the same effect as a RunTask step, then CommitOffsets."""
    from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import (
        CommitOffsets,
        ProcessingStrategy,
        ProcessingStrategyFactory,
        RunTask,
    )
    from arroyo.types import Commit, Message, Partition, Topic

    state: dict[str, Any] = {"seen": 0, "total": 0, "started": 0.0, "ended": 0.0}
    processor: StreamProcessor[KafkaPayload] | None = None

    def effect(message: Message[KafkaPayload]) -> None:
        if not state["started"]:
            state["started"] = time.perf_counter()
        state["total"] += len(message.payload.value)
        state["seen"] += 1
        if state["seen"] >= records and processor is not None:
            state["ended"] = time.perf_counter()
            processor.signal_shutdown()

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Mapping[Partition, int]
        ) -> ProcessingStrategy[KafkaPayload]:
            return RunTask(effect, CommitOffsets(commit))

    config = get_settings().kafka_config(
        **{
            **CONSUMER_DEFAULTS,
            "group.id": f"bench-loop-arroyo-{uuid.uuid4().hex[:8]}",
            "enable.auto.offset.store": False,
        }
    )
    consumer = KafkaConsumer(config)
    processor = StreamProcessor(consumer, Topic(topic), Factory())
    processor.run()  # until signal_shutdown; closes the consumer
    return float(state["ended"] - state["started"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30k records, 3 runs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    records, runs = (30_000, 3) if args.quick else (args.records, args.runs)
    topic = fresh_topic("loop", PARTITIONS)
    try:
        fill(topic, records)
        rates: dict[str, list[float]] = {"keel": [], "arroyo": []}
        loops = {"keel": keel_loop, "arroyo": arroyo_loop}
        for run in range(runs):
            order = ["keel", "arroyo"] if run % 2 == 0 else ["arroyo", "keel"]
            for name in order:
                seconds = loops[name](topic, records)
                rates[name].append(records / seconds)
                print(f"run {run + 1} {name}: {records / seconds:,.0f} records/s", flush=True)
        ratios = [a / k for a, k in zip(rates["arroyo"], rates["keel"], strict=True)]
        emit(
            {
                "bench": "consumer_loop",
                "machine": machine(),
                "records": records,
                "partitions": PARTITIONS,
                "keel_loop_records_s": summary(rates["keel"]),
                "arroyo_records_s": summary(rates["arroyo"]),
                "arroyo_vs_keel_loop": summary(ratios),
            }
        )
    finally:
        drop_topics(topic)


if __name__ == "__main__":
    main()
