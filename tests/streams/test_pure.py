"""Windows, dedup decisions, discovery, scaffolding and key routing, on plain values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keel.streams import dedup
from keel.streams.app import key_partition
from keel.streams.discovery import discover
from keel.streams.errors import BadQuery, ProcessorError
from keel.streams.scaffold import scaffold
from keel.streams.windows import HOUR_US, expire, iso, parse_window, window_start


def test_window_start_and_iso() -> None:
    ts = 1_764_318_245_123_456  # 2025-11-28T08:24:05Z
    assert iso(window_start(ts, HOUR_US)) == "2025-11-28T08:00:00Z"
    assert parse_window("2025-11-28T08:59:59Z", HOUR_US) == window_start(ts, HOUR_US)
    assert parse_window("2025-11-28T09:30:00+01:00", HOUR_US) == window_start(ts, HOUR_US)
    assert parse_window("1764318245", HOUR_US) == window_start(ts, HOUR_US)


def test_bad_window_names_the_value() -> None:
    with pytest.raises(BadQuery, match="'yesterday'"):
        parse_window("yesterday", HOUR_US)


def test_expire_keeps_the_newest_windows() -> None:
    windows = {str(h * HOUR_US): h for h in range(10)}
    expire(windows, 9 * HOUR_US + 5, HOUR_US, 3)
    assert sorted(int(k) // HOUR_US for k in windows) == [7, 8, 9]


def test_dedup_decisions() -> None:
    assert not dedup.is_duplicate(None, 5, 1000, 60_000)
    assert dedup.is_duplicate([3, 1000], 5, 2000, 60_000)  # seen elsewhere, in the window
    assert not dedup.is_duplicate([5, 1000], 5, 2000, 60_000)  # the same message again
    assert not dedup.is_duplicate([3, 1000], 5, 1000 + 60_001, 60_000)  # window passed
    assert dedup.after(None, [0])
    assert dedup.after([4], [5]) and not dedup.after([5], [5])
    assert dedup.after([5, 0], [5, 1]) and not dedup.after([5, 1], [5, 0])


def test_key_partition_matches_kafkas_murmur2() -> None:
    # Kafka's Java DefaultPartitioner (and librdkafka murmur2_random) place these keys so:
    # toPositive(murmur2(key)) % n, values computed with Kafka's Utils.murmur2.
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    for key in ("u1", "user-42", "product-ÄÖ", ""):
        assert key_partition(key, 6) == partitioner(key.encode(), list(range(6)), list(range(6)))


def test_discovery_finds_every_builtin_processor_without_a_list() -> None:
    names = {p.name for p in discover()}
    assert names == {"user_activity", "product_stats", "active_users", "job_triggers", "cache_fill"}
    assert [p.name for p in discover(only=["user_activity"])] == ["user_activity"]
    with pytest.raises(ProcessorError, match="nope"):
        discover(only=["nope"])


def test_discovery_rejects_two_processors_with_one_name(tmp_path: Path) -> None:
    pkg = tmp_path / "dupe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    body = (
        "from keel.streams.processor import View\n"
        "class V(View):\n    name = 'same'\n    def apply(self, s, e): return s\n"
        "processor = V()\n"
    )
    (pkg / "a.py").write_text(body)
    (pkg / "b.py").write_text(body)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ProcessorError, match="same"):
            discover("dupe_pkg")
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("kind", ["view", "keyed-view", "trigger"])
def test_scaffolded_processor_is_discovered_and_its_test_passes(tmp_path: Path, kind: str) -> None:
    """`keel streams new` output works as it is: its module is found and its test is green."""
    root = tmp_path / "proj"
    (root / "streams" / "processors").mkdir(parents=True)
    name = f"my_{kind.replace('-', '_')}"
    created = scaffold(name, kind, root)
    assert [p.name for p in created] == [f"{name}.py", f"test_processor_{name}.py"]
    # Run the generated test against a copy of the real packages plus the new module, laid
    # out as installed (`keel.streams` in keel/streams/; the other components come from the
    # install): the module is found only if it imports and is discovered as `keel.streams.*`.
    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "run"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(repo / "keel", target / "keel", ignore=skip)
    shutil.copytree(repo / "streams", target / "keel" / "streams", ignore=skip)
    (target / "keel" / "streams" / "processors" / f"{name}.py").write_text(created[0].read_text())
    (target / f"test_processor_{name}.py").write_text(created[1].read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"test_processor_{name}.py",
        ],
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keel.streams.discovery import discover; print([p.name for p in discover()])",
        ],
        cwd=target,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(target)},
    )
    assert name in listed.stdout


def test_scaffold_refuses_bad_names_and_existing_files(tmp_path: Path) -> None:
    (tmp_path / "streams" / "processors").mkdir(parents=True)
    with pytest.raises(ProcessorError, match="must start with a letter"):
        scaffold("Bad-Name", "view", tmp_path)
    with pytest.raises(ProcessorError, match="unknown kind"):
        scaffold("ok", "widget", tmp_path)
    scaffold("ok", "view", tmp_path)
    with pytest.raises(ProcessorError, match="already exists"):
        scaffold("ok", "view", tmp_path)


def test_console_script_new_and_list(tmp_path: Path) -> None:
    keel = str(Path(sys.executable).parent / "keel")
    (tmp_path / "streams" / "processors").mkdir(parents=True)
    done = subprocess.run(
        [keel, "streams", "new", "clicks", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "streams" / "processors" / "clicks.py").exists()
    bad = subprocess.run(
        [keel, "streams", "new", "9lives", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "9lives" in bad.stderr
    listed = subprocess.run([keel, "streams", "list"], capture_output=True, text=True, check=True)
    assert "user_activity\tview" in listed.stdout
