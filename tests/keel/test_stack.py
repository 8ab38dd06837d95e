"""`keel up --detach`, `keel status`, `keel down`: the real console script runs the whole
local stack in its own folder and on its own ports, and every Keel process of it answers
/healthz and /readyz in keel.health's one shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keel.local.ports import free_base_port
from tests.deploy.monitoring import dashboard_exprs, named_metrics, rule_exprs, served_names
from tests.polling import wait_for
from tests.processes import http_get

KEEL = str(Path(sys.executable).parent / "keel")
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.timeout(900)  # the whole stack, Prometheus included, on a shared 2-core machine
def test_up_status_down(tmp_path: Path) -> None:
    names = ["broker", "redis", "postgres", "registry", "streams", "jobs", "smtp", "ingest_lb",
             "ingest_a", "ingest_b", "outbox", "pgsink", "archive", "webhooks", "lag_exporter",
             "prometheus"]  # fmt: skip
    base = free_base_port(len(names))  # free port pairs, 100 apart: one per listening service
    port = {name: base + 100 * i for i, name in enumerate(names)}
    env = {
        **os.environ,
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_BROKER_PORT": str(port["broker"]),
        "KEEL_BOOTSTRAP_SERVERS": f"127.0.0.1:{port['broker']}",
        "KEEL_REDIS_URL": f"redis://127.0.0.1:{port['redis']}/0",
        "KEEL_POSTGRES_DSN": f"postgresql://keel:keel@127.0.0.1:{port['postgres']}/keel",
        "KEEL_REGISTRY_PORT": str(port["registry"]),
        "KEEL_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{port['registry']}",
        "KEEL_STREAMS_WEB_PORT": str(port["streams"]),
        "KEEL_JOBS_VIEWS_URL": f"http://127.0.0.1:{port['streams']}",
        "KEEL_JOBS_HTTP_PORT": str(port["jobs"]),
        "KEEL_SMTP_PORT": str(port["smtp"]),
        "KEEL_INGEST_LB_PORT": str(port["ingest_lb"]),
        "KEEL_INGEST_URL": f"http://127.0.0.1:{port['ingest_lb']}",
        "KEEL_INGEST_PORT": str(port["ingest_a"]),
        "KEEL_INGEST_REPLICA_PORTS": f"{port['ingest_a']},{port['ingest_b']}",
        "KEEL_OUTBOX_HTTP_PORT": str(port["outbox"]),
        "KEEL_PGSINK_HTTP_PORT": str(port["pgsink"]),
        "KEEL_ARCHIVE_HTTP_PORT": str(port["archive"]),
        "KEEL_WEBHOOKS_HTTP_PORT": str(port["webhooks"]),
        "KEEL_LAG_EXPORTER_PORT": str(port["lag_exporter"]),
        "KEEL_PROMETHEUS_PORT": str(port["prometheus"]),
    }
    # With a subscriber (nobody there; no event is sent), so the webhook sink runs and is
    # scraped too.
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "webhooks.toml").write_text(
        '[[subscriptions]]\nname = "nobody"\nurl = "http://127.0.0.1:9/hook"\n'
        'secret = "stack-test-secret-0123456789"\n'
    )

    def keel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KEEL, *args], env=env, capture_output=True, text=True, timeout=600, check=False
        )

    try:
        up = keel("up", "--detach")
        assert up.returncode == 0, up.stderr
        # Alive once `up` returns; ready (in their groups, tables recovered) soon after.
        status = wait_for(
            lambda: (st := keel("status")).returncode == 0 and st, 120, "every service ready"
        )
        lines = status.stdout.splitlines()
        assert {ln.split()[0] for ln in lines} >= {
            "kafka", "redis", "postgres", "registry", "outbox-relay", "pgsink", "archive-sink",
            "webhook-sink", "jobs-worker", "streams-1", "ingest-1", "ingest-2",
        }  # fmt: skip
        assert all(" healthy " in ln for ln in lines), status.stdout
        assert "prometheus" in status.stdout and "lag-exporter" in status.stdout
        _prometheus_scrapes_every_keel_process(port["prometheus"])
        _every_process_answers_the_one_shape(keel)
        # A second `up` reuses what runs.
        again = keel("up", "--detach")
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        down = keel("down")
        # As root, PostgreSQL keeps its data where the postgres user can reach it.
        shutil.rmtree(f"/var/lib/postgresql/keel-{port['postgres']}", ignore_errors=True)
    assert down.returncode == 0, down.stderr
    after = keel("status")
    assert after.returncode == 1
    assert all(" stopped " in ln for ln in after.stdout.splitlines())


def _prometheus_scrapes_every_keel_process(prometheus_port: int) -> None:
    """Prometheus has Keel's alert rules loaded and every Keel process up as a target; the
    metrics the rules and dashboards name are all served by those processes."""
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    rules = json.loads(http_get(f"{api}/rules")[1])["data"]["groups"]
    alerts = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert {"KeelConsumerGroupLagging", "KeelDeadLettersGrowing", "KeelServiceDown"} <= alerts

    def targets() -> list[dict[str, Any]]:
        return json.loads(http_get(f"{api}/targets")[1])["data"]["activeTargets"]

    def all_up() -> bool:
        return all(t["health"] == "up" for t in targets())

    wait_for(all_up, 60, "every target up", interval=1)
    jobs = {t["labels"]["job"] for t in targets()}
    assert {
        "keel-lag-exporter", "keel-registry", "keel-ingest-1", "keel-ingest-2", "keel-streams-1",
        "keel-jobs-worker", "keel-outbox-relay", "keel-pgsink", "keel-archive-sink",
        "keel-webhook-sink",
    } <= jobs, jobs  # fmt: skip

    served: set[str] = set()
    for target in targets():
        served |= served_names(http_get(target["scrapeUrl"])[1])
    named = named_metrics({**rule_exprs(), **dashboard_exprs()}, exact=True)
    named.pop("up")  # Prometheus's own, per target
    missing = {m: sorted(w) for m, w in named.items() if m not in served}
    assert not missing, missing


KEEL_PROCESSES = {"registry", "ingest-1", "ingest-2", "streams-1", "jobs-worker",
                  "outbox-relay", "pgsink", "archive-sink", "webhook-sink",
                   "lag-exporter"}  # fmt: skip


def _every_process_answers_the_one_shape(keel: Any) -> None:
    """`keel status --json` names where each Keel process serves keel.health; each answers
    /healthz and /readyz as {"status": "ok", "checks": {name: {"ok": true, ...}}} and serves
    /metrics."""
    listed = keel("status", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    found = {st["name"]: st for st in json.loads(listed.stdout)}
    assert {name for name, st in found.items() if st["url"]} == KEEL_PROCESSES
    for name in sorted(KEEL_PROCESSES):
        st = found[name]
        assert st["ready"] and st["readiness"]["status"] == "ok", st
        for path in ("/healthz", "/readyz"):
            status, text = http_get(st["url"] + path)
            body = json.loads(text)
            assert status == 200, (name, path, body)
            assert set(body) == {"status", "checks"} and body["status"] == "ok", (name, body)
            assert body["checks"] and all(
                isinstance(c, dict) and c["ok"] is True for c in body["checks"].values()
            ), (name, path, body)
        assert http_get(st["url"] + "/metrics")[0] == 200, name
    # A consumer's figures carry the one naming scheme.
    metrics = http_get(found["pgsink"]["url"] + "/metrics")[1]
    assert 'keel_consumer_consumed_total{component="pgsink"}' in metrics


def test_down_stops_what_the_stack_started_whatever_the_settings_say_now(tmp_path: Path) -> None:
    """A stack started with KEEL_STREAMS_WORKERS=2 and stopped from a shell without it: `keel
    down` stops `streams-2` too (its pid file), or the next `keel up` finds its port taken."""
    from keel.local.process import ManagedProcess

    home = tmp_path / "home"
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    workers = [ManagedProcess(f"streams-{i}", home / "run", home / "logs") for i in (1, 2)]
    for worker in workers:
        worker.start(sleeper, die_with_parent=True)
    assert all(w.is_running() for w in workers)
    env = {**os.environ, "KEEL_HOME": str(home), "KEEL_STREAMS_WORKERS": "1"}
    down = subprocess.run(
        [KEEL, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert down.returncode == 0, down.stderr
    assert not any(w.is_running() for w in workers), down.stdout + down.stderr
    assert "stopped streams-2 (not in the current settings)" in down.stdout + down.stderr
    assert not list((home / "run").glob("*.pid"))
