"""Baseline producer throughput on the local broker: Kafka's own ProducerPerformance tool
(Java, kafka-tools) against a plain confluent-kafka Python producer, same message size,
count and durability settings (acks=all, idempotence, linger.ms=5, no compression), run
alternately in one invocation. Later benchmarks measure against these figures.

    .venv/bin/python -m bench.producer_baseline [--quick] [--runs 5] [--records 1000000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from confluent_kafka import Producer

from bench.common import drop_topics, emit, fresh_topic, machine, summary
from keel.local import kafka_dist
from keel.settings import get_settings

# Equal batching for both: the Java default (16 KiB) and librdkafka's (1 MB) differ 60x.
PRODUCER_PROPS = {
    "acks": "all",
    "enable.idempotence": "true",
    "linger.ms": "5",
    "batch.size": "262144",
    "compression.type": "none",
}


def java_tool(topic: str, records: int, size: int) -> tuple[float, float]:
    settings = get_settings()
    libs = kafka_dist.kafka_libs(
        settings.home, settings.kafka_version, progress=lambda m: print(m, file=sys.stderr)
    )
    props = [
        f"bootstrap.servers={settings.bootstrap_servers}",
        *(f"{k}={v}" for k, v in PRODUCER_PROPS.items()),
    ]
    cmd = [
        kafka_dist.java_binary(), "-Xmx512m", f"-Dlog4j2.configurationFile={kafka_dist.log4j_config()}",
        "-cp", kafka_dist.classpath(libs), "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(records), "--record-size", str(size),
        "--throughput", "-1", "--producer-props", *props,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # Last summary line: "N records sent, X records/sec (Y MB/sec), ..."
    match = re.findall(r"records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", out)
    if not match:
        raise RuntimeError(f"unexpected ProducerPerformance output: {out[-500:]}")
    msgs, mb = match[-1]
    return float(msgs), float(mb)


def python_producer(topic: str, records: int, size: int) -> tuple[float, float]:
    settings = get_settings()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, **PRODUCER_PROPS})
    payload = b"x" * size
    failures = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    start = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, payload, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{failures} deliveries failed")
    rate = records / elapsed
    return rate, rate * size / (1024 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="under a minute: 3 runs of 200k records"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100, help="record size in bytes")
    args = parser.parse_args()
    runs, records = (3, 200_000) if args.quick else (args.runs, args.records)

    java_msgs, java_mb, py_msgs, py_mb = [], [], [], []
    for run in range(1, runs + 1):
        # Alternate who goes first so a warming broker favours neither.
        order = [("java", java_tool), ("python", python_producer)]
        for name, fn in order if run % 2 else reversed(order):
            topic = fresh_topic(f"baseline-{name}")
            try:
                msgs, mb = fn(topic, records, args.size)
            finally:
                drop_topics(topic)
            (java_msgs if name == "java" else py_msgs).append(msgs)
            (java_mb if name == "java" else py_mb).append(mb)
            print(
                f"run {run}/{runs} {name:<6} {msgs:>12,.0f} msgs/s {mb:8.2f} MB/s", file=sys.stderr
            )

    ratios = [p / j for p, j in zip(py_msgs, java_msgs, strict=True)]
    emit({
        "benchmark": "producer_baseline",
        "machine": machine(),
        "bootstrap": get_settings().bootstrap_servers,
        "records": records,
        "record_size": args.size,
        "java_producer_perf_msgs_s": summary(java_msgs),
        "java_producer_perf_mb_s": summary(java_mb),
        "confluent_kafka_msgs_s": summary(py_msgs),
        "confluent_kafka_mb_s": summary(py_mb),
        "python_vs_java_ratio": summary(ratios),
    })  # fmt: skip


if __name__ == "__main__":
    main()
