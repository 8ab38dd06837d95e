"""`keel jobs ...` through the real console script: bad input is one clear line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KEEL = str(Path(sys.executable).parent / "keel")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEEL, "jobs", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unknown_job_type_is_named() -> None:
    result = run("worker", "emails")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "keel: error: unknown job type(s) emails; known: email, report, report_ready"
    )


def test_bad_retry_ladder_is_named() -> None:
    result = run("worker", "email", KEEL_JOBS_RETRY_LADDER="10s,soon")
    assert result.returncode == 1
    assert "bad retry ladder step 'soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("worker", "topics", "smtp", "outbox", "dlq"):
        assert command in result.stdout
