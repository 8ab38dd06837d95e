"""Webhook sink throughput: events/s that `keel webhooks run` delivers to a local receiver
(consumer group, Avro decoding through the registry, HMAC signing, ordered lanes, commit
tracking), against a plain aiohttp client POSTing the same bodies to the same receiver with
as many requests in flight as the sink has lanes (one per partition), alternating who goes
first. Both rates are measured by the receiver (a separate process), from the first request
to the last, so process start and the group join are not counted.

    .venv/bin/python -m bench.webhooks [--quick] [--runs 3] [--events 20000]

Needs the broker (KEEL_BOOTSTRAP_SERVERS) and a schema registry (KEEL_SCHEMA_REGISTRY_URL,
else a private `keel registry` is started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

PARTITIONS = 6
SECRET = "whsec_bench_0123456789abcdef"


# -- the receiver (a subprocess: `python -m bench.webhooks --serve PORT`) -------------------


def serve(port: int) -> None:
    from aiohttp import web

    stats: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        if stats["count"] == 0:
            stats["first"] = now
        stats["count"] += 1
        stats["last"] = now
        return web.Response(status=204)

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset(_request: web.Request) -> web.Response:
        stats.update(count=0, first=0.0, last=0.0)
        return web.json_response(stats)

    app = web.Application()
    app.add_routes(
        [web.post("/hook", hook), web.get("/stats", get_stats), web.post("/reset", reset)]
    )
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as response:
        return dict(json.loads(response.read()))


def _reset(base: str) -> None:
    request = urllib.request.Request(f"{base}/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


def _wait_count(base: str, n: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> float:
    """Events/s the receiver saw once it has `n` requests."""
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(base)
        if stats["count"] >= n:
            return float(n / max(stats["last"] - stats["first"], 1e-9))
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the sink exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver has {stats['count']} of {n} after {timeout:.0f}s")
        time.sleep(0.2)


# -- the two contenders -------------------------------------------------------------------


def run_sink(base: str, topic: str, subs: Path, env: dict[str, str], n: int, log: Path) -> float:
    _reset(base)
    run_env = {
        **env,
        "KEEL_WEBHOOKS_TOPICS": topic,
        "KEEL_WEBHOOKS_GROUP": f"bench-webhooks-{uuid.uuid4().hex[:8]}",
        "KEEL_WEBHOOKS_DLQ_PREFIX": f"{topic}-dlq.",
        "KEEL_WEBHOOKS_HTTP_PORT": "0",
        "KEEL_LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keel.cli", "webhooks", "run", "-s", str(subs)],
            env=run_env,
            stdout=out,
            stderr=out,
        )
    try:
        return _wait_count(base, n, 600, proc)
    finally:
        proc.terminate()
        proc.wait(60)


def run_plain(base: str, bodies: list[bytes], concurrency: int) -> float:
    """A bare aiohttp client: the same bodies, `concurrency` requests in flight, no Kafka,
    no decoding, no signing."""
    import aiohttp

    _reset(base)

    async def main() -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as session:

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    async with session.post(
                        f"{base}/hook", data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        await response.read()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return _wait_count(base, len(bodies), 60, None)


# -- setup --------------------------------------------------------------------------------


def make_events(n: int) -> list[dict[str, Any]]:
    users = [f"user-{i}" for i in range(500)]
    return [
        {
            "event_id": str(uuid.uuid4()),
            "type": "page.viewed",
            "user_id": users[i % len(users)],
            "occurred_at": "2026-11-28T10:00:00Z",
            "url": f"https://shop.example/p/{i}",
            "path": f"/p/{i}",
            "title": "A product page",
        }
        for i in range(n)
    ]


def publish(topic_prefix: str, registry: str, events: list[dict[str, Any]]) -> None:
    from keel.producers.sdk import KeelProducer

    with KeelProducer(source="bench", registry_url=registry, topic_prefix=topic_prefix) as p:
        p.send_many(events)
        failed = [r for r in p.flush(120) if not r.ok]
    if failed:
        raise RuntimeError(f"publishing failed: {failed[:1]}")


def bodies_of(topic: str, registry: str, n: int) -> list[bytes]:
    """The exact bodies the sink POSTs: the topic's records decoded as the sink does."""
    from keel.connectors.webhooks import event_body
    from keel.kafka import make_consumer
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    serde = AvroSerde(RegistryClient(registry))
    consumer = make_consumer(f"bench-reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(event_body(serde.decode_plain(msg.value() or b"")))
    finally:
        consumer.close()
    if len(out) < n:
        raise RuntimeError(f"read {len(out)} of {n} records back")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of 3,000 events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.quick:
        args.runs, args.events = 3, 3000

    from bench.common import (
        drop_topics,
        emit,
        ensure_registry,
        fresh_events_topic,
        machine,
        stop_processes,
        summary,
        wait_http,
    )
    from keel.local.ports import free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    registry, registry_proc = ensure_registry(tmp / "registry.log")
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.webhooks", "--serve", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "receiver.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    prefix, topic = fresh_events_topic("webhooks", PARTITIONS)
    subs = tmp / "hooks.toml"
    subs.write_text(
        f'[[subscriptions]]\nname = "bench"\nurl = "{base}/hook"\nsecret = "{SECRET}"\n'
    )
    env = {**os.environ, "KEEL_SCHEMA_REGISTRY_URL": registry}
    try:
        wait_http(f"{base}/stats", receiver)
        publish(prefix, registry, make_events(args.events))
        bodies = bodies_of(topic, registry, args.events)
        sink_rates: list[float] = []
        plain_rates: list[float] = []
        ratios: list[float] = []
        for run in range(args.runs):
            order = ["sink", "plain"] if run % 2 == 0 else ["plain", "sink"]
            rates: dict[str, float] = {}
            for who in order:
                if who == "sink":
                    rates[who] = run_sink(base, topic, subs, env, args.events, tmp / "sink.log")
                else:
                    rates[who] = run_plain(base, bodies, PARTITIONS)
            sink_rates.append(rates["sink"])
            plain_rates.append(rates["plain"])
            ratios.append(rates["sink"] / rates["plain"])
            print(
                f"run {run + 1}: sink {rates['sink']:,.0f} events/s, "
                f"plain aiohttp {rates['plain']:,.0f} events/s, ratio {ratios[-1]:.2f}",
                flush=True,
            )
        emit(
            {
                "bench": "webhooks",
                "machine": machine(),
                "events": args.events,
                "partitions": PARTITIONS,
                "sink_events_per_s": summary(sink_rates),
                "plain_aiohttp_events_per_s": summary(plain_rates),
                "ratio": summary(ratios),
            }
        )
    finally:
        stop_processes([receiver, *([registry_proc] if registry_proc else [])])
        drop_topics(topic, f"{topic}-dlq.bench")


if __name__ == "__main__":
    main()
