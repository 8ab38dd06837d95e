"""A test run killed midway leaves no broker behind: the harness's broker dies with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keel.local.ports import free_base_port
from keel.local.process import ManagedProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    port = free_base_port()
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from keel.local.broker import LocalKafka
        from keel.settings import get_settings
        s = get_settings()
        LocalKafka(Path({str(tmp_path / "cluster")!r}), libs_home=s.home, version=s.kafka_version,
                   base_port={port}, die_with_parent=True).up(progress=lambda m: None)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "ready"
    broker = ManagedProcess(
        "broker-1", tmp_path / "cluster" / "node-1", tmp_path / "cluster" / "logs"
    )
    pid = broker.pid()
    assert pid is not None

    os.kill(parent.pid, signal.SIGKILL)  # as a CI timeout or a closed terminal would
    parent.wait()

    deadline = time.monotonic() + 60
    while broker.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert broker.pid() is None, "the broker outlived the run that started it"
