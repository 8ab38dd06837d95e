"""Stream processing benchmark, all on one pre-filled topic in one invocation:

1. `user_activity`-style count per key (events/s), each run with a fresh consumer group:
   - keel: a real `keel streams worker` running only the `user_activity` processor (Avro
     decoding through the registry, dedup by event_id, RocksDB tables, changelogs), taking
     each fetched run of a partition whole (keel.streams.faust_adapter);
   - faust_floor: a Faust agent with the same settings that only counts messages, in
     batches (bench/streams_floor.py): Faust's own per-event path, no decoding, no state;
   - quix: the same aggregation (count per user and event type, in its RocksDB state,
     Avro through the same registry) in Quix Streams, run from its own venv
     bench/.venv-quix (created here: its pins conflict with Keel's);
   - bytewax: Bytewax 0.21 (a dev dependency), a keyed count in its `stateful_map` with
     Keel's decoder in a `map`, one worker;
   - plain: a confluent-kafka consume loop that decodes with Keel's serde into a dict.
   Each run takes them in turn, Keel first and then the other way round; Keel and its floor
   are measured per second of wall time and per second of the worker's CPU time (`Rate`).
2. one Keel worker vs two, each on a fresh topic filled once every worker answers /readyz
   (the workers paused meanwhile), so neither start-up, a head start, the rebalance when the
   second joins nor the fill's own pace is counted.
3. end-to-end latency: HTTP 202 from `keel ingest` to the value visible in the query API,
   at a fixed moderate rate.

    .venv/bin/python -m bench.streams [--quick] [--runs 3] [--events 200000]

(--quick: one run of 60,000 events, under 3 minutes.)

Figures go to stderr as they come; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import (
    cpu_seconds,
    drop_topics,
    emit,
    ensure_registry,
    fresh_events_topic,
    fresh_topic,
    http_ok,
    machine,
    stop_processes,
    summary,
    wait_http,
)
from keel.kafka import make_admin, make_consumer, make_producer
from keel.local.ports import free_port
from keel.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
QUIX_VENV = ROOT / "bench" / ".venv-quix"
QUIX_VERSION = "3.28.1"
KEEL = str(Path(sys.executable).parent / "keel")
# How often the workers' /metrics are read while they drain: each read costs a worker ~1 ms
# of its loop (profiled), so not much more often than the figures need.
POLL_S = 0.1
TYPES = ["page.viewed", "product.viewed", "cart.item_added", "page.viewed"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the topic ---------------------------------------------------------------------------
def event(i: int, users: int) -> dict[str, Any]:
    kind = TYPES[i % len(TYPES)]
    base = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "user_id": f"user-{i % users}",
        "occurred_at": "2026-11-28T08:00:00Z",
    }
    if kind == "page.viewed":
        return {**base, "url": "https://shop.example/p", "path": "/p", "title": None,
                "referrer": None}  # fmt: skip
    if kind == "product.viewed":
        return {**base, "product_id": f"sku-{i % 50}", "currency": "EUR"}
    return {**base, "product_id": f"sku-{i % 50}", "quantity": 1, "unit_price": "2.50",
            "currency": "EUR"}  # fmt: skip


def fill(topic: str, count: int, users: int, registry: str) -> None:
    """Encode each distinct (type, user) event once, then produce `count` copies with fresh
    event_ids patched in (an Avro string: the uuid's 36 bytes in place of the template's)."""
    from keel.schemas.envelope import validate_event
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    serde = AvroSerde(RegistryClient(registry))
    producer = make_producer(**{"linger.ms": 50, "batch.size": 1_000_000})
    started = time.perf_counter()
    templates: dict[tuple[int, int], tuple[bytes, bytes, bytes, bytes]] = {}
    for i in range(count):
        shape = (i % len(TYPES), i % users)
        template = templates.get(shape)
        if template is None:
            event_type, record = validate_event(event(i, users), source="bench")
            value = serde.encode_with(event_type, record)
            head, _, tail = value.partition(str(record["event_id"]).encode())
            template = templates[shape] = (str(record["user_id"]).encode(), head, tail, value)
        key, head, tail, _ = template
        value = head + str(uuid.uuid4()).encode() + tail
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # the client's queue is full: let it send
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("could not fill the topic")
    log(f"filled {topic} with {count} events in {time.perf_counter() - started:.1f}s")


# -- measuring workers through their /metrics -------------------------------------------
def processed(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            continue
        for value in re.findall(r"^keel_streams_events_total\{[^}]*\} ([0-9.e+]+)$", text, re.M):
            total += float(value)
    return total


def all_ready(ports: list[int]) -> bool:
    return all(http_ok(f"http://127.0.0.1:{port}/readyz") for port in ports)


class Rate(NamedTuple):
    """A drain's throughput: per second of wall time, and per second of the workers' CPU
    time (user + system, all threads). The second is what a shared, noisy machine disturbs
    least: time the host gives to others is not charged to the workers."""

    wall: float
    cpu: float
    host_busy: float | None = None  # the host's busy share of its cores over the drain


def host_times() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def rate_of(ports: list[int], count: int, procs: list[subprocess.Popen[bytes]]) -> Rate:
    """Events/s from the first processed event seen to the last (start-up excluded)."""
    first: tuple[float, float, float] | None = None
    host_first = host_times()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
        done = processed(ports)
        now = time.monotonic()
        if done > 0 and first is None:
            first = (now, processed(ports), cpu_seconds(procs))
            host_first = host_times()
        if done >= count:
            if first is None or now - first[0] < 1.0:
                raise RuntimeError("drained in under a second; use more events")
            events = count - first[1]
            busy, total = (b - a for a, b in zip(host_first, host_times(), strict=True))
            return Rate(events / (now - first[0]), events / (cpu_seconds(procs) - first[2]),
                        round(busy / total, 2))  # fmt: skip
        time.sleep(POLL_S)
    raise RuntimeError("workers did not drain the topic in 600s")


def worker_env(topic: str, registry: str, tmp: Path, app_id: str) -> dict[str, str]:
    return {
        **os.environ,
        "KEEL_SCHEMA_REGISTRY_URL": registry,
        "KEEL_STREAMS_APP_ID": app_id,
        "KEEL_STREAMS_SOURCE_TOPIC": topic,
        "KEEL_STREAMS_DATA_DIR": str(tmp / "data"),
        "KEEL_STREAMS_DLQ_TOPIC": f"{app_id}-dlq",
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": f"{app_id}-",
        "KEEL_STREAMS_PROCESSORS": "user_activity",
        "KEEL_STREAMS_CACHE_ENABLED": "false",
        "KEEL_STREAMS_STANDBY_REPLICAS": "0",
        # Workers are paused while a scale run's topic fills: no rebalance meanwhile.
        "KEEL_STREAMS_SESSION_TIMEOUT_S": "60",
        "KEEL_LOG_LEVEL": "WARNING",
    }


def run_workers(
    kind: str,
    topic: str,
    count: int,
    registry: str,
    tmp: Path,
    workers: int = 1,
    fill_when_ready: Callable[[], None] | None = None,
) -> Rate:
    app_id = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    env = worker_env(topic, registry, tmp, app_id)
    argv = (
        [KEEL, "streams", "worker"]
        if kind == "keel"
        else [sys.executable, "-m", "bench.streams_floor"]
    )
    ports = [free_port() for _ in range(workers)]
    procs = []
    for port in ports:
        out = (tmp / f"{app_id}-{port}.log").open("wb")
        procs.append(subprocess.Popen(argv, env={**env, "KEEL_STREAMS_WEB_PORT": str(port)},
                                      stdout=out, stderr=out, cwd=ROOT))  # fmt: skip
    try:
        if fill_when_ready is not None:
            deadline = time.monotonic() + 180
            while not all_ready(ports):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{kind} workers not ready; logs in {tmp}")
                time.sleep(0.1)
            # Paused while the topic fills (a few seconds, well within the session timeout):
            # a worker drains as fast as the fill writes, so otherwise most events were
            # handled during the fill and the measured window was only its tail.
            for proc in procs:
                proc.send_signal(signal.SIGSTOP)
            try:
                fill_when_ready()
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGCONT)
        return rate_of(ports, count, procs)
    finally:
        stop_processes(procs)
        admin = make_admin()
        drop_topics(*[t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id)])


# -- Quix Streams, in its own venv --------------------------------------------------------
QUIX_SCRIPT = r"""
import json, sys, time
from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

broker, topic, group, registry, count, state_dir = sys.argv[1:7]
count = int(count)
app = Application(broker_address=broker, consumer_group=group, auto_offset_reset="earliest",
                  state_dir=state_dir, loglevel="WARNING")
source = app.topic(topic, key_deserializer="str", value_deserializer=AvroDeserializer(
    schema_registry_client_config=SchemaRegistryClientConfig(url=registry)))
marks = {"n": 0, "first": None, "last": None}

def count_per_key(value, state):
    kind = value["type"]
    state.set(kind, state.get(kind, 0) + 1)
    marks["n"] += 1
    now, cpu = time.monotonic(), time.process_time()
    if marks["first"] is None:
        marks["first"], marks["cpu_first"] = now, cpu
    marks["last"], marks["cpu_last"] = now, cpu
    return value

app.dataframe(source).apply(count_per_key, stateful=True)
app.run(count=count, timeout=120)
print(json.dumps({"n": marks["n"], "rate": (marks["n"] - 1) / (marks["last"] - marks["first"]),
                  "cpu_rate": (marks["n"] - 1) / (marks["cpu_last"] - marks["cpu_first"])}))
"""


def quix_python() -> Path:
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {QUIX_VENV} with quixstreams=={QUIX_VERSION} (once)")
        subprocess.run([sys._base_executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"],
                       check=True)  # fmt: skip
    return python


def run_quix(topic: str, count: int, registry: str, tmp: Path) -> Rate:
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    script = tmp / "quix_count.py"
    script.write_text(QUIX_SCRIPT)
    out = subprocess.run(
        [str(quix_python()), str(script), get_settings().bootstrap_servers, topic, group,
         registry, str(count), str(tmp / f"quix-{group}")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"quix run failed: {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["n"] < count:
        raise RuntimeError(f"quix counted {result['n']} of {count}")
    admin = make_admin()
    drop_topics(*[t for t in admin.list_topics(timeout=10).topics if group in t])
    return Rate(float(result["rate"]), float(result["cpu_rate"]))


# -- Bytewax ------------------------------------------------------------------------------
BYTEWAX_SCRIPT = r"""
import json, sys, time
import bytewax.operators as op
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde

broker, topic, registry, count = sys.argv[1:5]
count = int(count)
serde = AvroSerde(RegistryClient(registry))
marks = {"n": 0, "first": None, "last": None}

def decode(msg):
    return msg.key.decode(), serde.decode_plain(msg.value)

def count_per_key(state, value):
    state = state or {}
    kind = value["type"]
    state[kind] = state.get(kind, 0) + 1
    marks["n"] += 1
    now, cpu = time.monotonic(), time.process_time()
    if marks["first"] is None:
        marks["first"], marks["cpu_first"] = now, cpu
    marks["last"], marks["cpu_last"] = now, cpu
    return state, None

flow = Dataflow("keel-bench-count")
source = kop.input("kafka", flow, brokers=[broker], topics=[topic], tail=False)
counted = op.stateful_map("count", op.map("decode", source.oks, decode), count_per_key)
op.output("none", op.filter("drop", counted, lambda kv: False), TestingSink([]))
run_main(flow)
print(json.dumps({"n": marks["n"], "rate": (marks["n"] - 1) / (marks["last"] - marks["first"]),
                  "cpu_rate": (marks["n"] - 1) / (marks["cpu_last"] - marks["cpu_first"])}))
"""


def run_bytewax(topic: str, count: int, registry: str, tmp: Path) -> Rate:
    """Bytewax 0.21 (one worker, `run_main`), a keyed count in its stateful_map with Keel's
    decoder in a `map`; it reads the topic to its end (`tail=False`) without a group."""
    script = tmp / "bytewax_count.py"
    script.write_text(BYTEWAX_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), get_settings().bootstrap_servers, topic, registry,
         str(count)],
        capture_output=True, text=True, check=False, timeout=600, cwd=ROOT,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"bytewax run failed: {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["n"] < count:
        raise RuntimeError(f"bytewax counted {result['n']} of {count}")
    return Rate(float(result["rate"]), float(result["cpu_rate"]))


# -- plain confluent-kafka ---------------------------------------------------------------
def run_plain(topic: str, count: int, registry: str) -> Rate:
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    serde = AvroSerde(RegistryClient(registry))
    consumer = make_consumer(f"bench-plain-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    counts: dict[tuple[bytes, str], int] = {}
    seen = 0
    first = cpu_first = 0.0
    try:
        while seen < count:
            for msg in consumer.consume(1000, 1.0):
                if msg.error():
                    continue
                if seen == 0:
                    first, cpu_first = time.monotonic(), time.process_time()
                record = serde.decode(msg.value())
                key = (msg.key(), record["type"])
                counts[key] = counts.get(key, 0) + 1
                seen += 1
        return Rate((seen - 1) / (time.monotonic() - first),
                    (seen - 1) / (time.process_time() - cpu_first))  # fmt: skip
    finally:
        consumer.close()


# -- end-to-end latency -----------------------------------------------------------------
def e2e_latency(registry: str, tmp: Path, seconds: float, rate: float) -> dict[str, float]:
    """POST one event to `keel ingest`, then poll the query API until the user's view
    shows it; a background sender keeps `rate` events/s flowing meanwhile."""
    prefix, source = fresh_events_topic("e2e", 4)
    admin = make_admin()
    keys = tmp / "api-keys.json"
    ingest_port, worker_port = free_port(), free_port()
    env = {**os.environ, "KEEL_SCHEMA_REGISTRY_URL": registry, "KEEL_INGEST_KEYS_FILE": str(keys),
           "KEEL_INGEST_TOPIC_PREFIX": prefix, "KEEL_LOG_LEVEL": "WARNING"}  # fmt: skip
    api_key = subprocess.run([KEEL, "keys", "create", "bench"], env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    app_id = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    wenv = {**worker_env(source, registry, tmp, app_id), "KEEL_STREAMS_WEB_PORT": str(worker_port)}
    procs = [
        subprocess.Popen([KEEL, "ingest", "--port", str(ingest_port), "--workers", "1"], env=env,
                         stdout=(tmp / "ingest.log").open("wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([KEEL, "streams", "worker"], env=wenv,
                         stdout=(tmp / "e2e-worker.log").open("wb"), stderr=subprocess.STDOUT),
    ]  # fmt: skip
    ingest = f"http://127.0.0.1:{ingest_port}"
    views = f"http://127.0.0.1:{worker_port}/v1/views/user_activity/"
    try:
        wait_http(f"{ingest}/readyz", timeout=60)
        wait_http(f"http://127.0.0.1:{worker_port}/readyz", timeout=90)

        def post(body: dict[str, Any]) -> None:
            request = urllib.request.Request(
                f"{ingest}/v1/events", data=json.dumps(body).encode(), method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status != 202:
                    raise RuntimeError(f"ingest answered {response.status}")

        stop = threading.Event()

        def background() -> None:
            i = 0
            while not stop.is_set():
                post(event(i, 500))
                i += 1
                stop.wait(1.0 / rate)

        sender = threading.Thread(target=background, daemon=True)
        sender.start()
        latencies: list[float] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            user = f"probe-{uuid.uuid4().hex[:10]}"
            post({**event(0, 1), "user_id": user})
            accepted = time.monotonic()
            while not http_ok(views + user):
                if time.monotonic() - accepted > 30:
                    raise RuntimeError("an event did not show in the view within 30 s")
                time.sleep(0.002)
            latencies.append((time.monotonic() - accepted) * 1000)
            # A random pause: a fixed one phase-locks the probes to the worker's batch cycle
            # (KEEL_STREAMS_BATCH_WITHIN_S), so every probe would wait the same part of it.
            time.sleep(random.uniform(0.1, 0.3))
        stop.set()
        sender.join(10)
        latencies.sort()
        return {
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "samples": len(latencies),
            "background_rate": rate,
        }
    finally:
        stop_processes(procs)
        drop_topics(
            source, *[t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id)]
        )


def run_scaled(workers: int, args: argparse.Namespace, registry: str, tmp: Path) -> Rate:
    """Keel's rate with `workers` workers on a fresh topic, filled once every worker answers
    /readyz: the group has settled before the first event, so neither a worker's head start
    (the first to start takes every partition) nor the rebalance when the next one joins
    counts (a worker now drains most of a pre-filled topic before a second one is in)."""
    topic = fresh_topic("streams-scale", args.partitions)
    try:
        return run_workers("keel", topic, args.events, registry, tmp, workers=workers,
                           fill_when_ready=lambda: fill(topic, args.events, args.users, registry))  # fmt: skip
    finally:
        drop_topics(topic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under 3 minutes: 1 run of 60,000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.events = 1, 60_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    registry, registry_proc = ensure_registry(tmp / "registry.log")
    topic = fresh_topic("streams", args.partitions)
    names = ("keel", "faust_floor", "quix", "bytewax", "plain")
    results: dict[str, list[float]] = {k: [] for k in names}
    per_cpu: dict[str, list[float]] = {k: [] for k in names}
    scale: dict[str, list[float]] = {"one_worker": [], "two_workers": []}
    # How busy the host's cores were while one and two workers drained: two workers can only
    # go faster than one while the host has cores to spare.
    busy: dict[str, list[float]] = {"one_worker": [], "two_workers": []}
    try:
        fill(topic, args.events, args.users, registry)
        quix_python()
        others = {
            "quix": lambda: run_quix(topic, args.events, registry, tmp),
            "bytewax": lambda: run_bytewax(topic, args.events, registry, tmp),
            "plain": lambda: run_plain(topic, args.events, registry),
        }
        for run in range(args.runs):
            # Keel first, its floor and its peers right after it, then the other way round
            # the next run: a ratio is only as good as both drains seeing the same machine.
            for name in names if run % 2 == 0 else names[::-1]:
                rate = (
                    others[name]()
                    if name in others
                    else run_workers(name, topic, args.events, registry, tmp)
                )
                results[name].append(rate.wall)
                per_cpu[name].append(rate.cpu)
                log(f"run {run + 1}: {name} {rate.wall:,.0f} events/s, "
                    f"{rate.cpu:,.0f} per CPU-second")  # fmt: skip
            for workers, label in ((1, "one_worker"), (2, "two_workers")):
                rate = run_scaled(workers, args, registry, tmp)
                scale[label].append(rate.wall)
                busy[label].append(rate.host_busy or 0.0)
                log(f"run {run + 1}: keel with {workers} worker(s) {rate.wall:,.0f} events/s, "
                    f"host cores {rate.host_busy:.0%} busy")  # fmt: skip
        latency = e2e_latency(registry, tmp, 5 if args.quick else 30, rate=20)
        log(f"end-to-end latency {latency}")
    finally:
        drop_topics(topic)
        if registry_proc is not None:
            stop_processes([registry_proc])
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = lambda a, b: [x / y for x, y in zip(results[a], results[b], strict=True)]  # noqa: E731
    cpu_of = lambda a, b: [x / y for x, y in zip(per_cpu[a], per_cpu[b], strict=True)]  # noqa: E731
    cpu_ratio = cpu_of("keel", "faust_floor")
    emit({
        "machine": machine(),
        "events": args.events,
        "users": args.users,
        "partitions": args.partitions,
        "events_per_s": {k: summary(v) for k, v in results.items()},
        "vs_faust_floor": round(statistics.median(ratio("keel", "faust_floor")), 2),
        "vs_faust_floor_runs": [round(x, 2) for x in ratio("keel", "faust_floor")],
        # The same per CPU-second of each drain (see Rate): the cost per event, Keel's
        # against Faust's, as the host's other tenants disturb it least.
        "events_per_cpu_s": {k: summary(v) for k, v in per_cpu.items()},
        "vs_faust_floor_cpu": round(statistics.median(cpu_ratio), 2),
        "vs_faust_floor_cpu_runs": [round(x, 2) for x in cpu_ratio],
        "vs_quix": round(statistics.median(ratio("keel", "quix")), 2),
        "vs_quix_runs": [round(x, 2) for x in ratio("keel", "quix")],
        # Per CPU-second of each (Quix, Bytewax and the plain loop time their own process):
        # what one core does, whatever the drain waited for on a shared machine.
        "vs_quix_cpu": round(statistics.median(cpu_of("keel", "quix")), 2),
        "vs_quix_cpu_runs": [round(x, 2) for x in cpu_of("keel", "quix")],
        "vs_bytewax_cpu": round(statistics.median(cpu_of("keel", "bytewax")), 2),
        "vs_bytewax": round(statistics.median(ratio("keel", "bytewax")), 2),
        "vs_bytewax_runs": [round(x, 2) for x in ratio("keel", "bytewax")],
        # CPU time (user + system, all threads) of the Keel worker per event it handled.
        "cpu_us_per_event": round(1e6 / statistics.median(per_cpu["keel"]), 1),
        "vs_plain": round(statistics.median(ratio("keel", "plain")), 2),
        "scale_runs": {k: summary(v) for k, v in scale.items()},
        "scale_host_busy": {k: summary(v) for k, v in busy.items()},
        "scale_2_workers": round(statistics.median(
            [b / a for a, b in zip(scale["one_worker"], scale["two_workers"], strict=True)]), 2),
        "e2e_p50_ms": latency["p50_ms"],
        "e2e_p99_ms": latency["p99_ms"],
        "e2e": latency,
    })  # fmt: skip


if __name__ == "__main__":
    main()
