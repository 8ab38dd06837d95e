"""Helpers shared by the benchmark scripts: machine description, stats, topics, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from keel.kafka import TopicSpec, delete_topics, ensure_topics, make_admin, wait_for_topics
from keel.local.ports import free_port
from keel.local.process import dying_with_parent
from keel.settings import KeelSettings, get_settings


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
    return _created(f"bench-{prefix}-{uuid.uuid4().hex[:8]}", partitions)


def fresh_events_topic(stem: str, partitions: int) -> tuple[str, str]:
    """A fresh topic prefix and its `events` topic, created: where Keel's producers write
    catalog events when `KEEL_INGEST_TOPIC_PREFIX` is that prefix."""
    prefix = f"bench-{stem}-{uuid.uuid4().hex[:8]}-"
    return prefix, _created(prefix + "events", partitions)


def _created(name: str, partitions: int) -> str:
    admin = make_admin()
    ensure_topics(admin, [TopicSpec(name, partitions)])
    wait_for_topics(admin, [name])
    return name


def drop_topics(*names: str) -> None:
    delete_topics(make_admin(), names)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 300)
    except OSError:  # URLError and HTTPError included
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Poll until `url` answers 2xx; fail early if `proc` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: its server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.1)


def ensure_registry(log_file: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The configured registry when it answers, else a private `keel registry` on a free port
    and its own topic; returns its URL and the process to stop (None when not ours)."""
    url = get_settings().schema_registry_url
    if http_ok(f"{url}/subjects"):
        return url, None
    port = free_port()
    env = {
        **os.environ,
        "KEEL_REGISTRY_PORT": str(port),
        "KEEL_REGISTRY_TOPIC": f"_schemas-bench-{uuid.uuid4().hex[:6]}",
    }
    with log_file.open("wb") as out:
        # Dies with the benchmark, even a killed one (no registry left behind).
        argv = dying_with_parent([sys.executable, "-m", "keel.cli", "registry"])
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/subjects", proc)
    return url, proc


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """Terminate all first, then wait for each (killing a straggler): they stop in parallel."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(procs: Sequence[subprocess.Popen[bytes]]) -> float:
    """CPU time (user + system) the processes have used so far."""
    total = 0
    for proc in procs:
        # /proc/<pid>/stat after the command's ")": state is field 3, utime 14, stime 15.
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def emit(result: dict[str, Any]) -> None:
    """The figures as one JSON object on the last line, for anyone to rerun and compare."""
    print(json.dumps(result, sort_keys=True))


@contextlib.contextmanager
def private_postgres(home: Path, given_by: str, options: Sequence[str] = ()) -> Iterator[str]:
    """The DSN in the environment variable `given_by` when set, else a PostgreSQL of the
    project's own (Debian's package) on a free port under `home`, stopped afterwards;
    `options` are its extra server settings (`wal_level=logical`)."""
    given = os.environ.get(given_by)
    if given:
        yield given
        return
    from keel.local.services import PostgresService

    dsn = f"postgresql://keel:keel@127.0.0.1:{free_port()}/keel"
    service = PostgresService(KeelSettings(home=home, postgres_dsn=dsn), options=options)  # type: ignore[arg-type]
    service.start(progress=lambda _m: None)
    try:
        yield dsn
    finally:
        service.stop(progress=lambda _m: None)
        # As root its data lives outside `home` (/var/lib/postgresql/keel-<port>): a bench
        # run left up to 1 GB of tables and WAL there each time.
        shutil.rmtree(service.data_dir, ignore_errors=True)
