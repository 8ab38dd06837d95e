"""Helpers shared by the benchmark scripts: machine description, stats, topics, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.kafka import TopicSpec, delete_topics, ensure_topics, make_admin, wait_for_topics


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        names = [
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated runs."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": len(values),
    }


def fresh_topic(prefix: str, partitions: int = 1) -> str:
    name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
    admin = make_admin()
    ensure_topics(admin, [TopicSpec(name, partitions)])
    wait_for_topics(admin, [name])
    return name


def drop_topics(*names: str) -> None:
    delete_topics(make_admin(), names)


def emit(result: dict[str, Any]) -> None:
    """The figures as one JSON object on the last line, for anyone to rerun and compare."""
    print(json.dumps(result, sort_keys=True))
