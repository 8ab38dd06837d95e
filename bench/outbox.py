"""Outbox relay throughput: rows/s the relay publishes from a pre-filled outbox table (claim
FOR UPDATE SKIP LOCKED, produce through KeelProducer, wait for the acks, mark, commit),
against the plain producer SDK publishing the same events in the same invocation, in batches
of the same size with a flush per batch (the same ack discipline), and as one stream with a
single flush. Runs alternate who goes first.

    .venv/bin/python -m bench.outbox [--quick] [--runs 5] [--rows 100000] [--batch 500]

Needs the broker (KEEL_BOOTSTRAP_SERVERS); uses KEEL_SCHEMA_REGISTRY_URL when it answers
(else a private registry) and KEEL_OUTBOX_DSN when set (else a private PostgreSQL).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from bench.common import (
    drop_topics,
    emit,
    ensure_registry,
    fresh_events_topic,
    machine,
    private_postgres,
    stop_processes,
    summary,
)
from keel.connectors.outbox import OutboxRelay, OutboxTable, connect, create_outbox
from keel.producers.sdk import KeelProducer
from keel.settings import KeelSettings, get_settings

PARTITIONS = 3


def events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "type": "page.viewed",
            "user_id": f"u-{i % 1000}",
            "url": "https://shop.example/p/1",
            "path": "/p/1",
        }
        for i in range(n)
    ]


def fill(dsn: str, table: OutboxTable, rows: list[dict[str, Any]]) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(table.ident()))
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} (event) FROM STDIN").format(table.ident())) as copy,
        ):
            for event in rows:
                copy.write_row((Jsonb(event),))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table.ident()))


def run_relay(settings: KeelSettings, dsn: str, table: OutboxTable, rows: list[Any]) -> float:
    fill(dsn, table, rows)
    relay = OutboxRelay(settings)
    try:
        relay.producer.send(rows[0]).result()  # warm: connection, schema id, compiled encoder
        started = time.perf_counter()
        published = relay.drain()
        elapsed = time.perf_counter() - started
    finally:
        relay.close()
    if published != len(rows):
        raise RuntimeError(f"relay published {published} of {len(rows)} rows")
    return len(rows) / elapsed


def run_sdk(settings: KeelSettings, rows: list[Any], batch: int | None) -> float:
    with KeelProducer(source="bench", settings=settings) as producer:
        producer.send(rows[0]).result()
        producer.flush()
        started = time.perf_counter()
        step = batch or len(rows)
        for start in range(0, len(rows), step):
            producer.send_many(rows[start : start + step])
            results = producer.flush()
            if not all(r.ok for r in results):
                raise RuntimeError("the SDK baseline failed to deliver")
        return len(rows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k rows, 3 runs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.runs = 20_000, 3

    with tempfile.TemporaryDirectory(prefix="keel-bench-outbox-") as tmp:
        home = Path(tmp)
        registry, registry_proc = ensure_registry(home / "registry.log")
        prefix, topic = fresh_events_topic("outbox", PARTITIONS)
        try:
            with private_postgres(home / "pg", "KEEL_OUTBOX_DSN") as dsn:
                settings = get_settings().model_copy(
                    update={
                        "schema_registry_url": registry,
                        "ingest_topic_prefix": prefix,
                        "outbox_dsn": SecretStr(dsn),  # model_copy does not validate
                        "outbox_table": f"bench_outbox_{uuid.uuid4().hex[:8]}",
                        "outbox_batch_size": args.batch,
                    }
                )
                table = OutboxTable.of(settings.outbox_table)
                with connect(dsn) as conn:
                    create_outbox(conn, table)
                figures: dict[str, list[float]] = {"relay": [], "sdk_batched": [], "sdk": []}
                for run in range(args.runs):
                    rows = events(args.rows)
                    order = ["relay", "sdk_batched", "sdk"]
                    if run % 2:
                        order.reverse()
                    for name in order:
                        if name == "relay":
                            rate = run_relay(settings, dsn, table, rows)
                        else:
                            batch = args.batch if name == "sdk_batched" else None
                            rate = run_sdk(settings, rows, batch)
                        figures[name].append(rate)
                        print(f"run {run + 1} {name}: {rate:,.0f} rows/s", flush=True)
                with connect(dsn) as conn:
                    conn.execute(sql.SQL("DROP TABLE {}").format(table.ident()))
        finally:
            drop_topics(topic)
            if registry_proc is not None:
                stop_processes([registry_proc])

    ratios = [r / b for r, b in zip(figures["relay"], figures["sdk_batched"], strict=True)]
    ratios_stream = [r / b for r, b in zip(figures["relay"], figures["sdk"], strict=True)]
    emit(
        {
            "bench": "outbox",
            "machine": machine(),
            "rows": args.rows,
            "batch": args.batch,
            "relay_rows_per_s": summary(figures["relay"]),
            "sdk_batched_rows_per_s": summary(figures["sdk_batched"]),
            "sdk_stream_rows_per_s": summary(figures["sdk"]),
            "ratio_relay_vs_sdk_batched": summary(ratios),
            "ratio_relay_vs_sdk_stream": summary(ratios_stream),
        }
    )


if __name__ == "__main__":
    main()
