"""`keel up --detach`, `keel status`, `keel down`: the real console script runs the whole
local stack in its own folder and on its own ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel.local.broker import free_base_port

KEEL = str(Path(sys.executable).parent / "keel")
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_up_status_down(tmp_path: Path) -> None:
    base = free_base_port(3)  # three port pairs free: broker, Redis, PostgreSQL
    env = {
        **os.environ,
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_BROKER_PORT": str(base),
        "KEEL_BOOTSTRAP_SERVERS": f"127.0.0.1:{base}",
        "KEEL_REDIS_URL": f"redis://127.0.0.1:{base + 100}/0",
        "KEEL_POSTGRES_DSN": f"postgresql://keel:keel@127.0.0.1:{base + 200}/keel",
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
        assert {ln.split()[0] for ln in lines} >= {"kafka", "redis", "postgres"}
        assert all(" healthy " in ln for ln in lines), status.stdout
        # A second `up` reuses what runs.
        again = keel("up", "--detach")
        assert again.returncode == 0 and "already running" in again.stderr
    finally:
        down = keel("down")
        # As root, PostgreSQL keeps its data where the postgres user can reach it.
        shutil.rmtree(f"/var/lib/postgresql/keel-{base + 200}", ignore_errors=True)
    assert down.returncode == 0, down.stderr
    after = keel("status")
    assert after.returncode == 1
    assert all(" stopped " in ln for ln in after.stdout.splitlines())
