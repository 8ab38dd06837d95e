"""A test run killed midway leaves no Redis or PostgreSQL behind: the session services the
`redis_url` and `postgres_dsn` fixtures start die with the run, as its broker does
(tests/keel/test_killed_run.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keel.local.ports import free_port
from keel.local.process import ManagedProcess
from tests.polling import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# The service, started as the fixtures of tests/conftest.py start it, in a parent that
# then waits on its stdin: killed, it stands for a SIGKILLed pytest.
PARENT = """
import sys
from pathlib import Path
from keel.local.services import PostgresService, RedisService
from keel.settings import KeelSettings
home, port = Path(sys.argv[1]), sys.argv[2]
if sys.argv[3] == "redis":
    service = RedisService(
        KeelSettings(home=home, redis_url=f"redis://127.0.0.1:{port}/0"), die_with_parent=True
    )
else:
    dsn = f"postgresql://keel:keel@127.0.0.1:{port}/keel"
    service = PostgresService(KeelSettings(home=home, postgres_dsn=dsn), die_with_parent=True)
service.start(progress=lambda _m: None)
print(service.data_dir, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_a_session_service_dies_with_a_killed_parent(name: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT), str(home), str(free_port()), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    service = ManagedProcess(name, home / "run", home / "logs")
    data_dir = ""
    try:
        assert parent.stdout is not None
        data_dir = parent.stdout.readline().strip()  # printed once the service is healthy
        assert data_dir, f"{name} did not start:\n{service.tail()}"
        assert service.pid() is not None

        os.kill(parent.pid, signal.SIGKILL)  # as a CI timeout or a closed terminal would
        parent.wait()

        wait_for(lambda: service.pid() is None, 60, f"{name} gone after its parent's SIGKILL")
    finally:
        parent.kill()
        parent.wait()
        service.stop()  # only if the test failed: leave nothing running either way
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)  # as root PostgreSQL's is outside tmp
