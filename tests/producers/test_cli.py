"""The console scripts themselves: `keel keys create`, `keel ingest` with two reuse-port
worker processes, `keel demo` sending sessions through it, and /metrics summing workers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keel.local.ports import free_port
from keel.producers.app import build_app
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel
from tests.producers.conftest import post, serve_in_thread
from tests.producers.test_http_roundtrip import order


def _env(settings: KeelSettings) -> dict[str, str]:
    return {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KEEL_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "KEEL_HOME": str(settings.home),
        "KEEL_INGEST_KEYS_FILE": str(settings.ingest_keys_file),
        "KEEL_INGEST_TOPIC_PREFIX": settings.ingest_topic_prefix,
    }


def test_keys_create_rejects_unknown_types(ingest_settings: KeelSettings) -> None:
    result = run_keel("keys", "create", "shop", "--types", "nope.nope", env=_env(ingest_settings))
    assert result.returncode == 1
    assert "unknown event type(s) nope.nope" in result.stderr
    assert not Path(str(ingest_settings.ingest_keys_file)).exists()


def test_ingest_with_workers_and_demo(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any], tmp_path: Path
) -> None:
    env = _env(ingest_settings)
    key = run_keel(
        "keys", "create", "shop", "--types", "order.placed,page.viewed", env=env, check=True
    ).stdout.strip()
    assert key.startswith("keel_")
    listed = run_keel("keys", "list", env=env, check=True).stdout
    entry = json.loads(listed.splitlines()[0])
    assert entry["source"] == "shop" and "sha256" not in entry and key not in listed
    assert key not in Path(str(ingest_settings.ingest_keys_file)).read_text()
    demo_key = run_keel("keys", "create", "demo", env=env, check=True).stdout.strip()

    port = free_port()
    server = KeelProcess.start(
        [KEEL, "ingest", "--port", str(port), "--workers", "2"],
        env,
        tmp_path / "ingest.log",
        port=port,
        name="keel ingest",
    )
    try:
        url = server.url
        wait_for(server.ready, 60, f"keel ingest on {url}/readyz")
        for _ in range(10):  # connections spread over both workers
            status, _, body = post(url, order(), key)
            assert status == 202, body
        status, _, _ = post(
            url, {"type": "track", "user_id": "u", "name": "x", "properties": {}}, key
        )
        assert status == 403
        demo = run_keel(
            "demo", "--rate", "50", "--duration", "2", "--url", url, "--key", demo_key,
            env=env, check=True, timeout=60,
        )  # fmt: skip
        stats = json.loads(demo.stdout.strip().splitlines()[-1])
        assert stats["accepted"] >= 50 and stats["rejected"] == 0 and stats["failed"] == 0
        assert "accepted" in demo.stderr  # the live progress line
        metrics = server.text("/metrics")
        # multiprocess mode: the figures of both workers, summed
        found = re.search(
            r'keel_ingest_events_accepted_total\{type="page.viewed"\} ([\d.]+)', metrics
        )
        assert found and float(found.group(1)) >= 1
        assert "keel_ingest_produce_seconds_bucket" in metrics
    finally:
        assert server.stop_gracefully(30) == 0
    records = topic_reader()
    sources = {v["source"] for *_, v in records}
    assert sources == {"shop", "demo"}
    types = {v["type"] for *_, v in records if v["source"] == "demo"}
    assert {"user.signed_up", "page.viewed", "product.viewed"} <= types
    assert len(records) == 10 + stats["accepted"]


def test_a_revoked_key_is_refused_by_every_replica(ingest_settings: KeelSettings) -> None:
    """Two replicas read one keys file; `keel keys revoke` makes both answer 401 within about a
    second (each reloads the file every second), and the other keys keep working."""
    env = _env(ingest_settings)
    doomed = run_keel("keys", "create", "doomed", env=env, check=True).stdout.strip()
    kept = run_keel("keys", "create", "kept", env=env, check=True).stdout.strip()
    doomed_id = doomed.split("_")[1]
    with (
        serve_in_thread(build_app(ingest_settings)) as one,
        serve_in_thread(build_app(ingest_settings)) as two,
    ):
        for url in (one, two):
            assert post(url, order(), doomed)[0] == 202
        revoked = run_keel("keys", "revoke", doomed_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert f"revoked {doomed_id} (source doomed)" in revoked.stdout
        # Within a second (each replica reloads the file every second), plus a margin for a
        # loaded machine: the deadline starts once the command has rewritten the file.
        wait_for(
            lambda: all(post(u, order(), doomed)[0] == 401 for u in (one, two)),
            2.0, "401 from both replicas", interval=0.05,
        )  # fmt: skip
        for url in (one, two):
            assert post(url, order(), kept)[0] == 202
    again = run_keel("keys", "revoke", doomed_id, env=env)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"keel: error: no API key with id {doomed_id!r} in {ingest_settings.ingest_keys_file} "
        f"(ids: {kept.split('_')[1]})"
    ]
    assert doomed not in json.dumps(run_keel("keys", "list", env=env).stdout)
