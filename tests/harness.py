"""Helpers that start real Keel processes for tests: shared by fixtures and by tests that
need a private one (their own broker, registry, ...)."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from keel.local.process import ManagedProcess


def wait_http_ok(url: str, process: ManagedProcess | None = None, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 2xx; fail early with the log if `process` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process is not None and process.exited_early():
                raise RuntimeError(f"{process.name} exited:\n{process.tail()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.2)


def start_registry(run_dir: Path, port: int, topic: str, **env: str) -> tuple[ManagedProcess, str]:
    """`keel registry` as a process that dies with the test run; returns it and its URL."""
    process = ManagedProcess("registry", run_dir, run_dir)
    process.start(
        [sys.executable, "-m", "keel.cli", "registry"],
        env={**os.environ, "KEEL_REGISTRY_TOPIC": topic, "KEEL_REGISTRY_PORT": str(port), **env},
        die_with_parent=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", process)
    return process, url
