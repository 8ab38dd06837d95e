"""No loss when the broker dies mid-load: every event answered 2xx is on Kafka after the
broker is back; events that got no 2xx are absent or retries with the same event_id; while
it is down, answers are 503 + Retry-After within a bounded time; ingestion recovers alone.

This test runs its own broker and registry (never the shared one), and kills the broker."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.kafka import TopicSpec, ensure_topics, make_admin, wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port
from keel.producers.app import build_app
from keel.producers.auth import create_key
from keel.settings import KeelSettings, get_settings
from tests.harness import start_registry
from tests.producers.conftest import free_port, post, read_topic, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DELIVERY_TIMEOUT_S = 3.0


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[tuple[LocalKafka, str]]:
    settings = get_settings()
    cluster = LocalKafka(
        tmp_path / "kafka", libs_home=settings.home, version=settings.kafka_version,
        base_port=free_base_port(), heap="384m", die_with_parent=True,
    )  # fmt: skip
    bootstrap = cluster.up(progress=lambda _m: None)
    port = free_port()
    registry, url = start_registry(
        tmp_path / "registry",
        port,
        f"_schemas-{uuid.uuid4().hex[:8]}",
        KEEL_BOOTSTRAP_SERVERS=bootstrap,
    )
    try:
        yield cluster, url
    finally:
        registry.stop()
        cluster.down(progress=lambda _m: None)


def _event(user: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "type": "page.viewed", "user_id": user,
        "url": "https://shop.example/", "path": "/",
    }  # fmt: skip


def test_broker_killed_mid_load(private_stack: tuple[LocalKafka, str], tmp_path: Path) -> None:
    cluster, registry_url = private_stack
    bootstrap = cluster.bootstrap()
    topic = "events"
    admin = make_admin(KeelSettings(bootstrap_servers=bootstrap))
    ensure_topics(admin, [TopicSpec(topic, 3)])
    wait_for_topics(admin, [topic])
    settings = KeelSettings(
        bootstrap_servers=bootstrap, schema_registry_url=registry_url, home=tmp_path / "home",
        ingest_keys_file=tmp_path / "keys.json", ingest_delivery_timeout_s=DELIVERY_TIMEOUT_S,
    )  # fmt: skip
    key = create_key(tmp_path / "keys.json", "loadtest")

    acked: set[str] = set()
    sent: set[str] = set()
    saw_non_2xx: set[str] = set()
    statuses: Counter[int] = Counter()
    slow: list[float] = []
    retry_after_missing: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int, url: str) -> None:
        pending: list[dict[str, Any]] = []
        while not stop.is_set() or pending:
            batch = pending or [_event(f"u-{n}-{i}") for i in range(10)]
            started = time.monotonic()
            try:
                status, headers, body = post(url, {"events": batch}, key)
            except OSError:
                status, headers, body = 0, {}, None
            took = time.monotonic() - started
            with lock:
                statuses[status] += 1
                sent.update(e["event_id"] for e in batch)
                if took > DELIVERY_TIMEOUT_S + 3:
                    slow.append(took)
                if status in (202, 207):
                    for item in body["results"]:
                        if item["status"] == "accepted":
                            acked.add(item["event_id"])
                    # retry what was not accepted, with the same event_ids
                    pending = [
                        batch[r["index"]] for r in body["results"] if r["status"] != "accepted"
                    ]
                else:
                    if status == 503 and "Retry-After" not in headers:
                        retry_after_missing.append(status)
                    pending = batch
                saw_non_2xx.update(e["event_id"] for e in pending)
            if pending:
                time.sleep(0.2)  # a client honouring Retry-After, shortened for the test

    with serve_in_thread(build_app(settings)) as url:
        threads = [threading.Thread(target=client, args=(n, url)) for n in range(3)]
        for t in threads:
            t.start()
        _wait(lambda: len(acked) >= 300, 60, "events acked before the kill")
        cluster.kill_node(1)
        killed_at = len(acked)
        _wait(lambda: statuses[503] >= 3, 60, "503 answers while the broker is down")
        time.sleep(2)  # load goes on against a dead broker for a while
        _restart(cluster)
        _wait(
            lambda: len(acked) >= killed_at + 300, 120,
            lambda: f"ingestion recovering by itself ({statuses}, acked {len(acked)}); broker log:\n"
            + cluster.nodes()[0].process.tail(40),
        )  # fmt: skip
        stop.set()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)

    assert statuses[503] >= 3, statuses
    assert not retry_after_missing
    assert not slow, f"answers slower than the bound: {slow}"
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    records = read_topic(bootstrap, registry_url, topic, timeout=90)
    on_kafka = Counter(str(v["event_id"]) for *_, v in records)
    assert acked <= set(on_kafka), f"{len(acked - set(on_kafka))} acknowledged events lost"
    assert set(on_kafka) <= sent
    duplicates = {e for e, n in on_kafka.items() if n > 1}
    assert duplicates <= saw_non_2xx  # only retries of events that got no 2xx repeat
    assert sent == acked  # every client retried until its events were accepted


def _restart(cluster: LocalKafka) -> None:
    """Start the killed broker again from a fresh interpreter: forking the JVM from this
    process (many threads) with a preexec hook could deadlock the child before exec.
    The teardown's `cluster.down()` stops it through its pid file."""
    code = (
        "import sys; from pathlib import Path; from keel.local.broker import LocalKafka;"
        "LocalKafka(Path(sys.argv[1]), libs_home=Path(sys.argv[2]), version=sys.argv[3],"
        " base_port=int(sys.argv[4]), heap='384m').start_node(1)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(cluster.root), str(cluster.libs_home), cluster.version,
         str(cluster.base_port)], check=True, timeout=120,
    )  # fmt: skip


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.1)
