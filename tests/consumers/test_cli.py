"""`keel jobs ...` through the real console script: bad input is one clear line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

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


def test_job_topics_get_as_many_partitions_as_the_stream_workers_give_them(
    kafka_bootstrap: str, admin: Any
) -> None:
    from keel.kafka import delete_topics

    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    result = run(
        "topics",
        "email",
        KEEL_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KEEL_JOBS_TOPIC_PREFIX=prefix,
        KEEL_STREAMS_SOURCE_PARTITIONS="5",
    )
    names = [f"{prefix}jobs.email", f"{prefix}jobs.email.retry", f"{prefix}jobs.email.dlq"]
    try:
        assert result.returncode == 0, result.stderr
        topics = admin.list_topics(timeout=10).topics
        # The source as the stream workers create it (the partitions of `events`); the
        # retry and dead-letter topics are the job worker's own.
        assert [len(topics[n].partitions) for n in names] == [5, 3, 3]
    finally:
        delete_topics(admin, names)
