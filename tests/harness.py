"""Helpers that start real Keel processes for tests: shared by fixtures and by tests that
need a private one (their own broker, registry, ...)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.polling import wait_for
from tests.processes import KeelProcess


def start_registry(run_dir: Path, port: int, topic: str, **env: str) -> tuple[KeelProcess, str]:
    """`keel registry` as a process that dies with the test run, logging to run_dir; returns
    it once /healthz answers, and its URL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    process = KeelProcess.start(
        [sys.executable, "-m", "keel.cli", "registry"],
        {**os.environ, "KEEL_REGISTRY_TOPIC": topic, "KEEL_REGISTRY_PORT": str(port), **env},
        run_dir / "registry.log",
        port=port,
        name="registry",
    )
    try:
        wait_for(lambda: process.answers("/healthz"), 60, f"the registry on {process.url}")
    except BaseException:
        process.stop()
        raise
    return process, process.url
