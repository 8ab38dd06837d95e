"""Archive sink throughput: events/s that `ArchiveSink` archives from a pre-filled topic
(consumer group, one gzip JSON Lines file per partition, base64 + JSON per record, fsync,
rename, directory fsync, commit), against a plain confluent-kafka consume loop writing the
same key and value bytes, length-prefixed, to one gzip file (then fsync and commit), in the
same invocation, alternating who goes first. Each side is timed from its first record to
its files durable and offsets committed, so the group join is not counted.

    .venv/bin/python -m bench.archive [--quick] [--runs 3] [--events 100000]

Needs the broker (KEEL_BOOTSTRAP_SERVERS) and a schema registry (KEEL_SCHEMA_REGISTRY_URL,
else a private `keel registry` is started) to pre-fill the topic with Keel Avro events.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

PARTITIONS = 6


def run_sink(topic: str, n: int, root: Path) -> float:
    from keel.connectors.archive import ArchiveSink
    from keel.settings import get_settings

    settings = get_settings().model_copy(
        update={
            "archive_topics": topic,
            "archive_group": f"bench-archive-{uuid.uuid4().hex[:8]}",
            "archive_roll_age_s": 600.0,  # files close at the end, as the baseline's
        }
    )
    sink = ArchiveSink(settings, root=root)
    stop = threading.Event()
    worker = threading.Thread(target=sink.run, args=(stop,))
    worker.start()
    deadline = time.monotonic() + 300
    while sink.counts.consumed == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.perf_counter()
    while sink.counts.consumed < n and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()  # the open files are finished (fsync, rename) and committed, as in `run`
    worker.join()
    elapsed = time.perf_counter() - started
    if sink.counts.consumed != n:
        raise RuntimeError(f"the sink archived {sink.counts.consumed} of {n}")
    return n / elapsed


def run_plain(topic: str, n: int, root: Path) -> float:
    from keel.kafka import make_consumer

    consumer = make_consumer(f"bench-plain-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    path = root / "plain.bin.gz"
    raw = path.open("wb")
    out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)
    count, started = 0, 0.0
    last: dict[int, int] = {}
    deadline = time.monotonic() + 300
    while count < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is not None:
                continue
            if count == 0:
                started = time.perf_counter()
            key, value = msg.key() or b"", msg.value() or b""
            out.write(struct.pack(">II", len(key), len(value)) + key + value)
            last[msg.partition() or 0] = msg.offset() or 0
            count += 1
    out.close()
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()
    consumer.commit(
        offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False
    )
    consumer.close()
    elapsed = time.perf_counter() - started
    if count != n:
        raise RuntimeError(f"the plain loop read {count} of {n}")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 20,000 events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.events = 3, 20_000

    from bench.common import (
        drop_topics,
        emit,
        ensure_registry,
        fresh_events_topic,
        machine,
        stop_processes,
        summary,
    )
    from bench.webhooks import make_events, publish

    tmp = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    registry, registry_proc = ensure_registry(tmp / "registry.log")
    prefix, topic = fresh_events_topic("archive", PARTITIONS)
    try:
        publish(prefix, registry, make_events(args.events))
        sink_rates: list[float] = []
        plain_rates: list[float] = []
        ratios: list[float] = []
        for run in range(args.runs):
            order = ["sink", "plain"] if run % 2 == 0 else ["plain", "sink"]
            rates: dict[str, float] = {}
            for who in order:
                root = tmp / f"{who}-{run}"
                root.mkdir()
                runner = run_sink if who == "sink" else run_plain
                rates[who] = runner(topic, args.events, root)
                shutil.rmtree(root)
            sink_rates.append(rates["sink"])
            plain_rates.append(rates["plain"])
            ratios.append(rates["sink"] / rates["plain"])
            print(
                f"run {run + 1}: sink {rates['sink']:.0f}/s, plain {rates['plain']:.0f}/s, "
                f"ratio {ratios[-1]:.2f}",
                flush=True,
            )
        emit(
            {
                "bench": "archive",
                "events": args.events,
                "partitions": PARTITIONS,
                "sink_events_per_s": summary(sink_rates),
                "plain_events_per_s": summary(plain_rates),
                "ratio": summary(ratios),
                "machine": machine(),
            }
        )
    finally:
        drop_topics(topic)
        if registry_proc is not None:
            stop_processes([registry_proc])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
