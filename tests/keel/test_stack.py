"""`keel up --detach`, `keel status`, `keel down`: the real console script runs the whole
local stack in its own folder and on its own ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel.local.ports import free_base_port

KEEL = str(Path(sys.executable).parent / "keel")
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_up_status_down(tmp_path: Path) -> None:
    names = ["broker", "redis", "postgres", "registry", "streams", "jobs", "smtp", "ingest_lb",
             "ingest_a", "ingest_b", "outbox", "pgsink", "archive"]  # fmt: skip
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
    }

    def keel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KEEL, *args], env=env, capture_output=True, text=True, timeout=300, check=False
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
