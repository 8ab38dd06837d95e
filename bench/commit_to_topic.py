"""Timing a PostgreSQL-to-Kafka relay from the outside, whatever runs it: rows committed into
its table, then read off its topic. Used by bench.outbox for Keel's relay and Debezium alike.

- `burst`: N rows committed in one transaction; rows/s from that commit until the topic
  holds N more records (the end offsets, polled: what the broker acknowledged).
- `trickle`: one row per transaction at a steady rate; each row's latency from its commit
  returning to a consumer reading its record, matched by `event_id`.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from keel.connectors.outbox import OutboxTable
from keel.kafka import make_consumer

Decode = Callable[[bytes], str]  # a record's value -> its event_id


class TopicWatch:
    """How many records a topic holds (the sum of its partitions' end offsets)."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.parts = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = make_consumer(f"bench-watch-{uuid.uuid4().hex[:8]}")

    def total(self) -> int:
        return sum(
            self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            for tp in self.parts
        )

    def wait_for(self, target: int, timeout: float) -> float:
        """The monotonic time the topic reached `target` records (polled every 5 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.total() >= target:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.total()} of {target} records after {timeout:.0f}s")
            time.sleep(0.005)

    def close(self) -> None:
        self.consumer.close()


def truncate(dsn: str, table: OutboxTable) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(table.ident()))


def burst(
    dsn: str, table: OutboxTable, events: Sequence[Mapping[str, Any]], watch: TopicWatch,
    timeout: float = 600.0,
) -> float:  # fmt: skip
    """Rows/s: `events` COPYed in one transaction, timed from its commit until the topic holds
    them all. The table is emptied first (in its own transaction, not timed)."""
    truncate(dsn, table)
    base = watch.total()
    with psycopg.connect(dsn) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} (event) FROM STDIN").format(table.ident())) as copy,
        ):
            for event in events:
                copy.write_row((Jsonb(event),))
        conn.commit()
        committed = time.monotonic()
    reached = watch.wait_for(base + len(events), timeout)
    return len(events) / (reached - committed)


@dataclass
class Latency:
    """Per-row commit-to-topic latencies of one trickle, and the rows never seen."""

    seconds: list[float]
    missing: int

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": round(percentile(self.seconds, 50) * 1000, 1),
            "p99_ms": round(percentile(self.seconds, 99) * 1000, 1),
            "max_ms": round(max(self.seconds) * 1000, 1),
            "rows": len(self.seconds),
            "missing": self.missing,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q% of them at or below."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latencies(committed: Mapping[str, float], seen: Mapping[str, float]) -> Latency:
    """Each committed row's time to its record (first sighting); rows without one count as
    missing, records of rows not committed here are ignored."""
    seconds = [seen[key] - at for key, at in committed.items() if key in seen]
    return Latency(seconds, len(committed) - len(seconds))


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": f"u-{i % 1000}",
        "url": "https://shop.example/p/1",
        "path": "/p/1",
    }


class _Reader(threading.Thread):
    """Reads `topic` from its current end, keeping each record's arrival time and value
    (decoded afterwards, so the loop does nothing but read)."""

    def __init__(self, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer: Consumer = make_consumer(f"bench-latency-{uuid.uuid4().hex[:8]}")
        # At the end offsets as they are now, not OFFSET_END (resolved later, by which time
        # the first rows may already be there).
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        for tp in parts:
            tp.offset = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        self.consumer.assign(parts)
        self.arrivals: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for message in self.consumer.consume(500, timeout=0.05):
                    now = time.monotonic()
                    value = message.value()
                    if message.error() is None and value is not None:
                        self.arrivals.append((now, value))
        finally:
            self.consumer.close()


def trickle(
    dsn: str, table: OutboxTable, topic: str, partitions: int, decode: Decode,
    rate: float, seconds: float, settle: float = 30.0,
) -> Latency:  # fmt: skip
    """One row per transaction, `rate` a second for `seconds`; each row's latency from its
    commit returning to its record read off `topic`."""
    truncate(dsn, table)
    reader = _Reader(topic, partitions)
    reader.start()
    committed: dict[str, float] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert = sql.SQL("INSERT INTO {} (event) VALUES (%s)").format(table.ident())
            start = time.monotonic()
            for i in range(int(rate * seconds)):
                pause = start + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the writer, not waiting for an effect
                event = _event(i)
                conn.execute(insert, (Jsonb(event),))
                committed[event["event_id"]] = time.monotonic()
        deadline = time.monotonic() + settle
        while len(reader.arrivals) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop.set()
        reader.join()
    seen: dict[str, float] = {}
    for at, value in list(reader.arrivals):
        seen.setdefault(decode(value), at)
    return latencies(committed, seen)
