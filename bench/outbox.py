"""Outbox relay throughput: rows/s the relay publishes from a pre-filled outbox table (claim
FOR UPDATE SKIP LOCKED, produce through KeelProducer, wait for the acks, mark, commit),
against the plain producer SDK publishing the same events in the same invocation, in batches
of the same size with a flush per batch (the same ack discipline), and as one stream with a
single flush. Runs alternate who goes first.

And against the tool a team would pick instead: Debezium's PostgreSQL connector with its
Outbox Event Router (bench/debezium.py) on the Kafka Connect runtime in Kafka's libs, on the
same PostgreSQL (`wal_level=logical`) and the same rows. Both run as their own long-lived
processes (`keel outbox run`, a standalone Connect worker), each on its own outbox table of
Keel's layout, and are timed alike from the outside (bench/commit_to_topic.py): rows/s from
the commit of N rows until the topic holds them (`vs_debezium` = relay / Debezium, median of
per-run ratios), and commit-to-consumer latency p50/p99 under a steady trickle of rows.

    .venv/bin/python -m bench.outbox [--quick] [--runs 5] [--rows 100000] [--batch 2000]
        [--no-debezium] [--latency-rate 200] [--latency-seconds 20]
        [--debezium-set KEY=VALUE ...] [--connect-set KEY=VALUE ...] [--workdir DIR]

Needs the broker (KEEL_BOOTSTRAP_SERVERS); uses KEEL_SCHEMA_REGISTRY_URL when it answers
(else a private registry) and KEEL_OUTBOX_DSN when set (else a private PostgreSQL, started
with wal_level=logical; a given one must have it, and a user allowed to replicate). Debezium
needs Java and, the first time, Maven to fetch its jars (cached under KEEL_HOME/debezium).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from bench import debezium
from bench.commit_to_topic import Decode, Latency, TopicWatch, burst, trickle
from bench.common import (
    cpu_seconds,
    drop_topics,
    emit,
    ensure_registry,
    fresh_events_topic,
    fresh_topic,
    machine,
    private_postgres,
    stop_processes,
    summary,
)
from keel.connectors.outbox import OutboxRelay, OutboxTable, connect, create_outbox
from keel.local import kafka_dist
from keel.local.process import dying_with_parent
from keel.producers.sdk import KeelProducer
from keel.schemas.catalog import load_catalog
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
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


def new_table(dsn: str, stem: str) -> OutboxTable:
    table = OutboxTable.of(f"bench_{stem}_{uuid.uuid4().hex[:8]}")
    with connect(dsn) as conn:
        create_outbox(conn, table)
    return table


def ready_for_debezium(dsn: str, private: bool) -> None:
    """Logical decoding on, and the DSN's user allowed to replicate: granted on the private
    PostgreSQL (as its superuser), checked on a given one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW wal_level").fetchone()
        if row is None or row[0] != "logical":
            raise SystemExit(
                f"bench.outbox: Debezium needs wal_level=logical; this PostgreSQL has {row and row[0]}"
                " (set it and restart, or run with --no-debezium)"
            )
        user = urlparse(dsn).username or "postgres"
        if private:
            url = urlparse(dsn)
            superuser = f"postgresql://postgres@{url.hostname}:{url.port}/{url.path.lstrip('/')}"
            with psycopg.connect(superuser, autocommit=True) as admin:
                admin.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(sql.Identifier(user)))
        row = conn.execute(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if not row or not row[0]:
            raise SystemExit(f"bench.outbox: Debezium needs the REPLICATION role; {user} lacks it")


def drop_slot(dsn: str, name: str) -> None:
    """The connector's slot and publication, if a killed worker left them (a clean stop drops
    the slot itself): an abandoned slot would keep the server's WAL forever."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND NOT active",
            (name,),
        )
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def relay_process(
    settings: KeelSettings, dsn: str, table: OutboxTable, log_file: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`keel outbox run` on `table`, as an operator runs it (its own process, NOTIFY-driven)."""
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KEEL_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "KEEL_INGEST_TOPIC_PREFIX": settings.ingest_topic_prefix,
        "KEEL_OUTBOX_DSN": dsn,
        "KEEL_OUTBOX_TABLE": table.qualified,
        "KEEL_OUTBOX_BATCH_SIZE": str(settings.outbox_batch_size),
        "KEEL_OUTBOX_HTTP_PORT": "0",
    }
    argv = [sys.executable, "-m", "keel.cli", "outbox", "run", "--http-port", "0"]
    with log_file.open("wb") as out:
        proc = subprocess.Popen(dying_with_parent(argv), env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop_processes([proc])


def warm(dsn: str, table: OutboxTable, watch: TopicWatch, who: str, rows: int) -> list[float]:
    """Bursts of `rows`, not counted, until two in a row agree within 15% (at most 8): the
    connections made, the slot streaming, schema ids cached, and the JVM's JIT done with
    Debezium's path (after one 200-row burst its first measured runs were a third and then
    two thirds of its later ones). Fails here, in one line, if `who` does not publish."""
    rates: list[float] = []
    try:
        while len(rates) < 8:
            rates.append(burst(dsn, table, events(rows), watch, timeout=300))
            if len(rates) >= 2 and abs(rates[-1] / rates[-2] - 1) <= 0.15:
                break
    except TimeoutError as exc:
        raise SystemExit(f"bench.outbox: {who} did not publish a warm-up burst: {exc}") from exc
    print(f"warm-up {who}: {', '.join(f'{r:,.0f}' for r in rates)} rows/s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15k rows, 3 runs, 5 s trickles")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    relay_batch = KeelSettings.model_fields["outbox_batch_size"].default
    parser.add_argument("--batch", type=int, default=relay_batch, help="the relay's default")
    parser.add_argument("--no-debezium", dest="debezium", action="store_false")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="rows/s of a trickle")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--debezium-set", action="append", default=[], metavar="KEY=VALUE",
        help="a connector setting over Debezium's default (e.g. poll.interval.ms=10)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-set", action="append", default=[], metavar="KEY=VALUE",
        help="a Connect worker setting (e.g. producer.linger.ms=20)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp folder)")
    args = parser.parse_args()
    key_values(args.debezium_set + args.connect_set)  # a malformed one ends here, before any start
    if args.quick:
        args.rows, args.runs, args.latency_seconds = 15_000, 3, 5.0

    base = get_settings()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keel-bench-outbox-") as tmp:
        home = args.workdir or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        registry, registry_proc = ensure_registry(home / "registry.log")
        prefix, topic = fresh_events_topic("outbox", PARTITIONS)
        dbz_topic = fresh_topic("outbox-debezium", PARTITIONS) if args.debezium else ""
        private = not os.environ.get("KEEL_OUTBOX_DSN")
        options = ("wal_level=logical",) if args.debezium else ()
        with contextlib.ExitStack() as stack:
            stack.callback(drop_topics, *[t for t in (topic, dbz_topic) if t])
            if registry_proc is not None:
                stack.callback(stop_processes, [registry_proc])
            dsn = stack.enter_context(private_postgres(home / "pg", "KEEL_OUTBOX_DSN", options))
            settings = base.model_copy(
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
            tables = [table]
            stack.callback(drop_tables, dsn, tables)  # the list as it is by then
            contenders = ["relay", "sdk_batched", "sdk"]
            if args.debezium:
                ready_for_debezium(dsn, private)
                relay_table, dbz_table = new_table(dsn, "relayproc"), new_table(dsn, "debezium")
                tables += [relay_table, dbz_table]
                contenders += ["relay_process", "debezium"]
                relay = stack.enter_context(
                    relay_process(settings, dsn, relay_table, home / "relay.log")
                )
                worker = start_debezium(settings, dsn, dbz_table, dbz_topic, home, args, stack)
                assert worker.proc is not None
                procs = {"relay_process": relay, "debezium": worker.proc}
                watches = {
                    "relay_process": TopicWatch(topic, PARTITIONS),
                    "debezium": TopicWatch(dbz_topic, PARTITIONS),
                }
                for watch in watches.values():
                    stack.callback(watch.close)
                warm_rows = max(1000, min(args.rows // 5, 20_000))
                warmups = {
                    "relay_process": warm(
                        dsn, relay_table, watches["relay_process"], "relay", warm_rows
                    ),
                    "debezium": warm(dsn, dbz_table, watches["debezium"], "debezium", warm_rows),
                }

            figures: dict[str, list[float]] = {name: [] for name in contenders}
            per_cpu: dict[str, list[float]] = {"relay_process": [], "debezium": []}
            for run in range(args.runs):
                rows = events(args.rows)
                order = contenders if run % 2 == 0 else contenders[::-1]
                for name in order:
                    if name == "relay":
                        rate = run_relay(settings, dsn, table, rows)
                    elif name in per_cpu:
                        cpu = cpu_seconds([procs[name]])
                        tbl = relay_table if name == "relay_process" else dbz_table
                        rate = burst(dsn, tbl, rows, watches[name])
                        # The process's own CPU only: PostgreSQL's share (the relay's queries,
                        # Debezium's walsender decoding) is not in it.
                        per_cpu[name].append(len(rows) / (cpu_seconds([procs[name]]) - cpu))
                    else:
                        batch = args.batch if name == "sdk_batched" else None
                        rate = run_sdk(settings, rows, batch)
                    figures[name].append(rate)
                    print(f"run {run + 1} {name}: {rate:,.0f} rows/s", flush=True)

            lat: dict[str, list[Latency]] = {"relay_process": [], "debezium": []}
            if args.debezium:
                decoders = {"relay_process": keel_event_id(registry), "debezium": json_event_id}
                where = {
                    "relay_process": (relay_table, topic),
                    "debezium": (dbz_table, dbz_topic),
                }
                for run in range(args.runs):
                    order = list(lat) if run % 2 == 0 else list(lat)[::-1]
                    for name in order:
                        tbl, tpc = where[name]
                        measured = trickle(
                            dsn, tbl, tpc, PARTITIONS, decoders[name],
                            args.latency_rate, args.latency_seconds,
                        )  # fmt: skip
                        lat[name].append(measured)
                        fig = measured.summary()
                        print(
                            f"run {run + 1} {name} latency: p50 {fig['p50_ms']} ms,"
                            f" p99 {fig['p99_ms']} ms ({fig['rows']} rows, {fig['missing']} missing)",
                            flush=True,
                        )

    ratios = [r / b for r, b in zip(figures["relay"], figures["sdk_batched"], strict=True)]
    ratios_stream = [r / b for r, b in zip(figures["relay"], figures["sdk"], strict=True)]
    result: dict[str, Any] = {
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
    if args.debezium:
        vs = [r / d for r, d in zip(figures["relay_process"], figures["debezium"], strict=True)]
        result.update(
            {
                "debezium": {
                    "version": debezium.VERSION,
                    "settings": {**debezium.DEFAULTS, **key_values(args.debezium_set)},
                    "connect_settings": key_values(args.connect_set),
                },
                "warm_up_rows": warm_rows,
                "warm_up_rows_per_s": {k: [round(r) for r in v] for k, v in warmups.items()},
                "relay_process_rows_per_s": summary(figures["relay_process"]),
                "debezium_rows_per_s": summary(figures["debezium"]),
                "relay_process_rows_per_cpu_s": summary(per_cpu["relay_process"]),
                "debezium_rows_per_cpu_s": summary(per_cpu["debezium"]),
                "vs_debezium": summary(vs),
                "latency_rate_per_s": args.latency_rate,
                "latency_seconds": args.latency_seconds,
                "relay_latency_ms": latency_summary(lat["relay_process"]),
                "debezium_latency_ms": latency_summary(lat["debezium"]),
            }
        )
    result["elapsed_s"] = round(time.monotonic() - started)
    emit(result)


def key_values(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments as a dict; one clear exit for a malformed one."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench.outbox: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def start_debezium(
    settings: KeelSettings, dsn: str, table: OutboxTable, topic: str, home: Path,
    args: argparse.Namespace, stack: contextlib.ExitStack,
) -> debezium.ConnectWorker:  # fmt: skip
    """Debezium's jars (fetched once), a Connect worker with the connector on `table`, its
    slot streaming; stopped (and its slot dropped) when `stack` closes."""
    plugins = debezium.plugin_path(settings.home, settings.maven_settings)
    libs = kafka_dist.kafka_libs(
        settings.home, settings.kafka_version, print, settings.maven_settings
    )
    worker = debezium.ConnectWorker(home / "connect", libs, plugins, settings.bootstrap_servers)
    name = f"keel-bench-dbz-{uuid.uuid4().hex[:8]}"
    config = debezium.connector_config(
        name, debezium.Database.of(dsn), table, topic, key_values(args.debezium_set)
    )
    stack.callback(drop_slot, dsn, name.replace("-", "_"))
    stack.callback(worker.stop)
    worker.start(config, key_values(args.connect_set))
    print(f"Kafka Connect with Debezium {debezium.VERSION} starting (log: {worker.log_file})")
    worker.wait_running()
    return worker


def drop_tables(dsn: str, tables: list[OutboxTable]) -> None:
    with connect(dsn) as conn:
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.ident()))


def keel_event_id(registry: str) -> Decode:
    serde = AvroSerde(RegistryClient(registry), load_catalog())
    return lambda value: str(serde.decode_plain(value)["event_id"])


def json_event_id(value: bytes) -> str:
    return str(orjson.loads(value)["event_id"])


def latency_summary(runs: list[Latency]) -> dict[str, Any]:
    """Per-run p50 and p99 (ms), each as median and spread over the runs."""
    if not runs:
        return {}
    figures = [run.summary() for run in runs]
    return {
        "p50": summary([f["p50_ms"] for f in figures]),
        "p99": summary([f["p99_ms"] for f in figures]),
        "missing": sum(run.missing for run in runs),
    }


if __name__ == "__main__":
    main()
