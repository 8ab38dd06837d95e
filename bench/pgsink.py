"""PostgreSQL sink throughput: events/s the sink writes from a pre-filled topic (consume,
decode through the registry, map, one INSERT per batch, DB commit, offset commit), against
plain psycopg loops inserting the same rows in the same batch size in the same invocation:
`executemany` of a multi-row INSERT ... ON CONFLICT DO NOTHING (the baseline), COPY into a temp table
then INSERT ... SELECT ON CONFLICT DO NOTHING (the sink's own write, alone: what Kafka and
decoding add is the rest), and one INSERT ... SELECT FROM unnest(arrays) (the alternative the
sink did not pick). Each run
starts from an empty table; runs alternate who goes first.

    .venv/bin/python -m bench.pgsink [--quick] [--runs 5] [--events 100000] [--batch 500]

Needs the broker (KEEL_BOOTSTRAP_SERVERS); uses KEEL_SCHEMA_REGISTRY_URL when it answers
(else a private registry) and KEEL_PGSINK_DSN when set (else a private PostgreSQL).
The sink's time runs from its first record read to its last row written (group join left
out, as the baselines have no group to join).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
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
from keel.connectors.pgsink import (
    PgSink,
    Row,
    Table,
    connect,
    create_table,
    event_row,
    insert_from_load,
    prepare_load,
    write_rows,
)
from keel.kafka import make_consumer
from keel.producers.sdk import KeelProducer
from keel.schemas.catalog import load_catalog
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import KeelSettings, get_settings

PARTITIONS = 3
COLUMNS = (
    'event_id, type, user_id, occurred_at, received_at, source, topic, partition, "offset", event'
)


def events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "type": "page.viewed",
            "user_id": f"u-{i % 1000}",
            "url": f"https://shop.example/p/{i % 500}",
            "path": f"/p/{i % 500}",
            "context": {"ip": "203.0.113.7", "user_agent": "bench/1", "session_id": f"s-{i}"},
        }
        for i in range(n)
    ]


def fill(settings: KeelSettings, n: int) -> None:
    with KeelProducer(source="bench", settings=settings) as producer:
        for start in range(0, n, 5000):
            producer.send_many(events(min(5000, n - start)))
        if not all(r.ok for r in producer.flush()):
            raise RuntimeError("filling the topic failed")


def read_rows(settings: KeelSettings, topic: str, n: int) -> list[Row]:
    """The rows the sink makes of the topic, built once for the baselines (not timed)."""
    serde = AvroSerde(RegistryClient(settings.schema_registry_url), load_catalog())
    consumer = make_consumer(f"bench-pgsink-reader-{uuid.uuid4().hex[:8]}", settings)
    consumer.subscribe([topic])
    rows: list[Row] = []
    deadline = time.monotonic() + 120
    try:
        while len(rows) < n and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None:
                    event = serde.decode_plain(msg.value() or b"")
                    rows.append(
                        event_row(event, msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                    )
    finally:
        consumer.close()
    if len(rows) != n:
        raise RuntimeError(f"read {len(rows)} of {n} records")
    return rows


def truncate(dsn: str, table: Table) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(table.ident()))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table.ident()))


def count(dsn: str, table: Table) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident())).fetchone()
    return int(row[0]) if row else 0


def run_sink(settings: KeelSettings, dsn: str, table: Table, n: int) -> float:
    truncate(dsn, table)
    settings = settings.model_copy(update={"pgsink_group": f"bench-pgsink-{uuid.uuid4().hex[:8]}"})
    sink = PgSink(settings)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while sink.counts.consumed == 0:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the sink read nothing")
            time.sleep(0.002)
        started = time.perf_counter()
        while sink.counts.processed < n:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the sink wrote {sink.counts.processed} of {n}")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        thread.join(60)
        sink.close()
    if count(dsn, table) != n:
        raise RuntimeError("the table does not hold every event")
    return n / elapsed


def run_plain(dsn: str, table: Table, rows: list[Row], batch: int, how: str) -> float:
    truncate(dsn, table)
    t = table.ident()
    values = sql.SQL(
        "INSERT INTO {} (" + COLUMNS + ") VALUES (%s::uuid, %s, %s,"
        " timestamptz 'epoch' + %s * interval '1 microsecond',"
        " timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s, %s, %s, %s::jsonb)"
        " ON CONFLICT (event_id) DO NOTHING"
    ).format(t)
    unnest = sql.SQL(
        "INSERT INTO {} (" + COLUMNS + ") SELECT v.id::uuid, v.type, v.user_id,"
        " timestamptz 'epoch' + v.occ * interval '1 microsecond',"
        " timestamptz 'epoch' + v.rec * interval '1 microsecond',"
        " v.source, v.topic, v.part, v.off, v.event::jsonb"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],"
        " %s::text[], %s::text[], %s::int[], %s::bigint[], %s::text[])"
        " AS v(id, type, user_id, occ, rec, source, topic, part, off, event)"
        " ON CONFLICT (event_id) DO NOTHING"
    ).format(t)
    from_load = insert_from_load(table)
    with connect(dsn) as conn:
        if how == "copy":
            prepare_load(conn)
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            if how == "copy":  # what the sink does
                write_rows(conn, from_load, chunk)
                continue
            with conn.transaction(), conn.cursor() as cur:
                if how == "executemany":
                    cur.executemany(values, chunk)
                else:
                    cur.execute(unnest, [list(column) for column in zip(*chunk, strict=True)])
        elapsed = time.perf_counter() - started
    if count(dsn, table) != len(rows):
        raise RuntimeError(f"{how} did not insert every row")
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 3 runs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    if args.quick:
        args.events, args.runs = 20_000, 3

    names = ["sink", "executemany", "unnest", "copy"]
    figures: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="keel-bench-pgsink-") as tmp:
        home = Path(tmp)
        registry, registry_proc = ensure_registry(home / "registry.log")
        prefix, topic = fresh_events_topic("pgsink", PARTITIONS)
        try:
            with private_postgres(home / "pg", "KEEL_PGSINK_DSN") as dsn:
                settings = get_settings().model_copy(
                    update={
                        "schema_registry_url": registry,
                        "ingest_topic_prefix": prefix,
                        "pgsink_dsn": SecretStr(dsn),  # model_copy does not validate
                        "pgsink_table": f"bench_events_{uuid.uuid4().hex[:8]}",
                        "pgsink_topics": topic,
                        "pgsink_batch_size": args.batch,
                        "pgsink_http_port": 0,
                        "pgsink_progress_interval_s": 3600.0,
                    }
                )
                table = Table.of(settings.pgsink_table)
                with connect(dsn) as conn:
                    create_table(conn, table)
                fill(settings, args.events)
                rows = read_rows(settings, topic, args.events)
                for run in range(args.runs):
                    order = names if run % 2 == 0 else list(reversed(names))
                    for name in order:
                        if name == "sink":
                            rate = run_sink(settings, dsn, table, args.events)
                        else:
                            rate = run_plain(dsn, table, rows, args.batch, name)
                        figures[name].append(rate)
                        print(f"run {run + 1} {name}: {rate:,.0f} events/s", flush=True)
                with connect(dsn) as conn:
                    conn.execute(sql.SQL("DROP TABLE {}").format(table.ident()))
        finally:
            drop_topics(topic)
            if registry_proc is not None:
                stop_processes([registry_proc])

    def ratio(a: str, b: str) -> dict[str, float]:
        return summary([x / y for x, y in zip(figures[a], figures[b], strict=True)])

    emit(
        {
            "bench": "pgsink",
            "machine": machine(),
            "events": args.events,
            "batch": args.batch,
            "sink_events_per_s": summary(figures["sink"]),
            "psycopg_executemany_rows_per_s": summary(figures["executemany"]),
            "psycopg_unnest_rows_per_s": summary(figures["unnest"]),
            "psycopg_copy_rows_per_s": summary(figures["copy"]),
            "ratio_sink_vs_executemany": ratio("sink", "executemany"),
            "ratio_unnest_vs_executemany": ratio("unnest", "executemany"),
            "ratio_copy_vs_unnest": ratio("copy", "unnest"),
            "ratio_copy_vs_executemany": ratio("copy", "executemany"),
        }
    )


if __name__ == "__main__":
    main()
