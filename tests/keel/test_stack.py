"""`keel up --detach`, `keel status`, `keel down`: the real console script runs the whole
local stack in its own folder and on its own ports."""

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
        status = keel("status")
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert {ln.split()[0] for ln in lines} >= {
            "kafka", "redis", "postgres", "registry", "outbox-relay", "pgsink", "archive-sink"
        }  # fmt: skip
        assert all(" healthy " in ln for ln in lines), status.stdout
        assert "prometheus" in status.stdout and "lag-exporter" in status.stdout
        _prometheus_scrapes_every_keel_process(port["prometheus"])
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
