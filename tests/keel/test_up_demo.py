"""`keel up --demo RATE` (issue 13, item 7): the demo is found from its entry point, not by a
probe process whose error was thrown away, and when it fails its own error is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.cli.stack import _start_demo, demo_failure
from tests.polling import wait_for


def test_a_failing_demo_shows_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_HOME", str(tmp_path))
    monkeypatch.setenv("KEEL_LOG_FORMAT", "yaml")  # a wrong setting: the demo ends at once
    started = _start_demo(5, tmp_path / "logs")
    assert started is not None, "keel demo is installed (producers' entry point)"
    process, log = started
    try:
        failure = wait_for(lambda: demo_failure(process, log), 60, "the demo's exit")
    finally:
        if process.poll() is None:
            process.kill()
    lines = failure.splitlines()
    assert lines[0] == f"warning: keel demo exited with status 2; last lines of {log}:"
    assert "KEEL_LOG_FORMAT" in failure


def test_a_running_demo_is_no_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_HOME", str(tmp_path))
    monkeypatch.setenv("KEEL_INGEST_API_KEY", "k")
    monkeypatch.setenv("KEEL_INGEST_URL", "http://127.0.0.1:1")  # nothing there: it retries
    started = _start_demo(5, tmp_path / "logs")
    assert started is not None
    process, log = started
    try:
        wait_for(lambda: "sent" in log.read_text(errors="replace"), 60, "the demo sending")
        assert demo_failure(process, log) is None
    finally:
        process.kill()
        process.wait(10)
