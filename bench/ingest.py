"""Ingestion throughput: the events API against a plain producer and a bare aiohttp server.

1. batch: events/s through POST /v1/events (batches of 100, wrk) vs a plain confluent-kafka
   producer producing the same Avro bytes (same config: acks=all, idempotent, lz4).
2. single: requests/s of one-event POSTs at fixed concurrencies (wrk; 32 and 128
   connections) vs a bare aiohttp handler that only answers 202, with the same worker
   count; p50/p99 of both. Beside them, the *floor*: the least any handler on Keel's stack
   does for one event (read and parse the body, Keel's validation and encoding, Keel's
   producer with acks=all, answer once acked), without Keel's checks, auth, limits and
   metrics. keel/floor is the cost of Keel's own request handling; floor/bare the cost of
   the stack itself.
The floor also takes the batches of case 1 (its figures: floor_batch_*).

Needs the broker (KEEL_BOOTSTRAP_SERVERS); starts Keel's registry on a free port unless
KEEL_SCHEMA_REGISTRY_URL answers; installs wrk from Debian when missing. Runs alternate
Keel and baseline; figures are medians over runs. Last line: one JSON object.

    .venv/bin/python -m bench.ingest --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    drop_topics,
    emit,
    ensure_registry,
    fresh_events_topic,
    fresh_topic,
    machine,
    stop_processes,
    summary,
    wait_http,
)
from keel.kafka import PRODUCER_DEFAULTS, make_producer
from keel.local.ports import free_port
from keel.local.system import ensure_command
from keel.producers.auth import create_key
from keel.producers.pipeline import Pipeline
from keel.schemas.catalog import load_catalog
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import get_settings

BATCH = 100


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "type": "order.placed", "user_id": f"u-{i % 1000}",
        "occurred_at": "2026-11-28T08:00:00+00:00", "context": {"session_id": "s-1"},
        "order_id": f"o-{i}", "total": "119.98", "currency": "EUR",
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "9.99"},
                  {"product_id": "p-2", "quantity": 1, "unit_price": "100.00"}],
    }  # fmt: skip


def _wrk(url: str, body: bytes, key: str, connections: int, seconds: float) -> dict[str, float]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    body_file = script.with_name("body.json")
    body_file.write_bytes(body)
    script.write_text(
        f"""
local f = io.open("{body_file}", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
    )
    out = subprocess.run(
        [ensure_command("wrk", "wrk"), "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if errors:
        raise RuntimeError(f"{errors} of {total} answers were not 2xx:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"\s{label}\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def _produce_wait(base: str) -> tuple[float, float]:
    """(sum of seconds, count) of Keel's produce latency histogram: from handing a request's
    events to librdkafka to its last ack, summed over the worker processes."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    total = re.search(r"^keel_ingest_produce_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^keel_ingest_produce_seconds_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def _plain_producer(topic: str, values: list[tuple[bytes, bytes]], events: int) -> float:
    producer = make_producer(**{**PRODUCER_DEFAULTS})
    started = time.perf_counter()
    n = 0
    while n < events:
        for key, value in values:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        n += len(values)
    producer.flush(60)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 short runs (under a minute)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk duration per case")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-connections", type=int, default=8)
    # 32: enough for two workers to overlap parsing, producing and answering, and the bare
    # server is CPU-bound there already (its p50 ~1 ms). 128: enough that Keel, whose every
    # answer waits for its ack, is CPU-bound too. The same for every side.
    parser.add_argument(
        "--single-connections",
        help="comma-separated wrk concurrencies (default 32,128; --quick: 32, to stay in a minute)",
    )
    parser.add_argument(
        "--linger-ms", type=int, help="KEEL_INGEST_LINGER_MS for Keel (default: Keel's own)"
    )
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        _bare_server(args.bare_server)
        return
    if args.floor_server:
        _floor_server(args.floor_server)
        return
    if args.quick:
        args.runs, args.seconds = 3, 2.0
    connections = args.single_connections or ("32" if args.quick else "32,128")
    concurrencies = [int(c) for c in connections.split(",")]
    settings = get_settings()
    with ExitStack() as stack:
        registry_url, registry_proc = ensure_registry(Path(tempfile.mkdtemp()) / "registry.log")
        if registry_proc is not None:
            stack.callback(stop_processes, [registry_proc])
        topic = fresh_topic("ingest", partitions=3)
        prefix, events_topic = fresh_events_topic("ingest", 3)
        stack.callback(drop_topics, topic, events_topic)
        keys = Path(tempfile.mkdtemp()) / "keys.json"
        key = create_key(keys, "bench")
        port = free_port()
        env = {
            **os.environ, "KEEL_SCHEMA_REGISTRY_URL": registry_url,
            "KEEL_INGEST_TOPIC_PREFIX": prefix, "KEEL_INGEST_KEYS_FILE": str(keys),
            "KEEL_INGEST_RATE_LIMIT": "1e9", "KEEL_INGEST_RATE_BURST": "1000000000",
            "KEEL_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        if args.linger_ms is not None:
            env["KEEL_INGEST_LINGER_MS"] = str(args.linger_ms)
        ingest = subprocess.Popen(
            [sys.executable, "-m", "keel.producers", "ingest", "--port", str(port),
             "--workers", str(args.workers)], env=env,
        )  # fmt: skip
        stack.callback(ingest.wait, 30)
        stack.callback(ingest.terminate)
        bare_port, bare = _servers("--bare-server", args.workers, os.environ, stack)
        floor_port, floor = _servers("--floor-server", args.workers, env, stack)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", ingest)
        deadline = time.monotonic() + 60
        while True:  # ready = schemas registered in every worker (any answers for all here)
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=3):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        wait_http(f"http://127.0.0.1:{bare_port}/", bare[0])
        wait_http(f"http://127.0.0.1:{floor_port}/", floor[0])

        batch = [_event(i) for i in range(BATCH)]
        batch_body = json.dumps({"events": batch}).encode()
        single_body = json.dumps(_event(0)).encode()
        # The same Avro bytes the API produces, for the plain producer.
        pipeline = Pipeline(AvroSerde(RegistryClient(registry_url), load_catalog()))
        values = [(o.key, o.value) for o in (pipeline.prepare(e, source="bench") for e in batch)]
        url = f"{base}/v1/events"
        bare_url = f"http://127.0.0.1:{bare_port}/v1/events"
        floor_url = f"http://127.0.0.1:{floor_port}/v1/events"
        _wrk(url, batch_body, key, 2, 1.0)  # warm-up
        _wrk(bare_url, single_body, key, 2, 1.0)
        _wrk(floor_url, single_body, key, 2, 1.0)

        rows: dict[str, list[float]] = {}
        for run in range(args.runs):
            plain_events = 200_000 if args.quick else 1_000_000
            if run % 2:
                plain = _plain_producer(topic, values, plain_events)
                b = _wrk(url, batch_body, key, args.batch_connections, args.seconds)
            else:
                b = _wrk(url, batch_body, key, args.batch_connections, args.seconds)
                plain = _plain_producer(topic, values, plain_events)
            fb = _wrk(floor_url, batch_body, key, args.batch_connections, args.seconds)
            figures = {
                "batch_eps": b["rps"] * BATCH, "plain_eps": plain,
                "batch_ratio": b["rps"] * BATCH / plain,
                "batch_p50_ms": b["p50_ms"], "batch_p99_ms": b["p99_ms"],
                "floor_batch_eps": fb["rps"] * BATCH,
                "floor_batch_ratio": fb["rps"] * BATCH / plain,
                "keel_vs_floor_batch": b["rps"] / fb["rps"],
            }  # fmt: skip
            for c in concurrencies:
                waited_before = _produce_wait(base)
                s = _wrk(url, single_body, key, c, args.seconds)
                waited_after = _produce_wait(base)
                f = _wrk(floor_url, single_body, key, c, args.seconds)
                r = _wrk(bare_url, single_body, key, c, args.seconds)
                # The mean ack wait of the single-event requests: how much of their latency
                # is Kafka's (linger + acks=all round trip + the hand-back to the handler).
                ack_wait_ms = (
                    (waited_after[0] - waited_before[0])
                    / (waited_after[1] - waited_before[1]) * 1000
                )  # fmt: skip
                # The first concurrency keeps the plain names (the figures).
                at = "" if c == concurrencies[0] else f"_c{c}"
                figures.update({
                    f"single_rps{at}": s["rps"], f"floor_rps{at}": f["rps"],
                    f"bare_rps{at}": r["rps"], f"single_ratio{at}": s["rps"] / r["rps"],
                    f"floor_ratio{at}": f["rps"] / r["rps"],
                    f"keel_vs_floor{at}": s["rps"] / f["rps"],
                    f"single_p50_ms{at}": s["p50_ms"], f"single_p99_ms{at}": s["p99_ms"],
                    f"floor_p50_ms{at}": f["p50_ms"], f"floor_p99_ms{at}": f["p99_ms"],
                    f"bare_p50_ms{at}": r["p50_ms"], f"bare_p99_ms{at}": r["p99_ms"],
                    f"single_ack_wait_ms{at}": ack_wait_ms,
                })  # fmt: skip
            for k, v in figures.items():
                rows.setdefault(k, []).append(v)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()),
                  file=sys.stderr)  # fmt: skip

    result: dict[str, Any] = {k: summary(v) for k, v in rows.items()}
    for k in ("batch_ratio", "single_ratio", *(f"single_ratio_c{c}" for c in concurrencies[1:])):
        result[k] = result[k]["median"]
    result["config"] = {
        "workers": args.workers, "batch": BATCH, "batch_connections": args.batch_connections,
        "single_connections": concurrencies, "seconds": args.seconds, "runs": args.runs,
        "linger_ms": settings.ingest_linger_ms if args.linger_ms is None else args.linger_ms,
    }  # fmt: skip
    result["machine"] = machine()
    emit(result)


def _bare_server(port: int) -> None:
    """The baseline: aiohttp answering 202 to any POST, nothing else (reuse-port worker)."""
    from aiohttp import web

    async def accept(_request: web.Request) -> web.Response:
        return web.json_response({"status": "accepted"}, status=202)

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/events", accept)
    app.router.add_get("/", ok)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=None, access_log=None)


def _servers(
    flag: str, workers: int, env: Mapping[str, str], stack: ExitStack
) -> tuple[int, list[subprocess.Popen[bytes]]]:
    """`workers` reuse-port processes of this script's baseline `flag` on one free port,
    stopped with `stack`."""
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.ingest", flag, str(port)], env=env)
        for _ in range(workers)
    ]
    for proc in procs:
        stack.callback(proc.terminate)
    return port, procs


def _floor_server(port: int) -> None:
    """The floor (reuse-port worker): an event or a batch per request, read and parsed,
    validated and encoded by Keel's pipeline, produced by Keel's producer (acks=all,
    idempotent, Keel's linger), answered 202 with the offsets once acknowledged. Nothing
    else: no API key, content checks, limits, metrics, nor answers for partial failures."""
    import asyncio
    from datetime import UTC, datetime

    import orjson
    from aiohttp import web

    from keel.producers.kafka_out import EventProducer
    from keel.producers.routes import client_context

    settings = get_settings()
    pipeline = Pipeline(
        AvroSerde(RegistryClient(settings.schema_registry_url), load_catalog()),
        topic_prefix=settings.ingest_topic_prefix,
    )
    pipeline.warm_up()
    producer = EventProducer(settings)

    async def accept(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        now = datetime.now(UTC)
        # Keel's own enrichment (client ip and agent): the same bytes on Kafka.
        context = client_context(request, trust_forwarded=False)
        batch = "events" in body
        items = [
            pipeline.prepare(e, source="bench", context=context, now=now)
            for e in (body["events"] if batch else [body])
        ]
        deliveries = await producer.send(items)
        if any(d.error is not None for d in deliveries):
            return web.Response(status=503)
        answer = [
            {"event_id": d.event_id, "topic": d.topic, "partition": d.partition,
             "offset": d.offset}
            for d in deliveries
        ]  # fmt: skip
        return web.Response(
            body=orjson.dumps({"results": answer} if batch else answer[0]),
            status=202, content_type="application/json",
        )  # fmt: skip

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(_app: web.Application) -> None:
        producer.start()

    async def stop(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, producer.close, 10.0)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/events", accept)
    app.router.add_get("/", ok)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=None, access_log=None)


if __name__ == "__main__":
    main()
