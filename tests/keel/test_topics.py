"""`keel topics plan|apply` against the real broker, through the console script: creates,
partition increases and config changes land as declared (read back from the broker), a second
plan is empty, what Kafka cannot do is refused with nothing changed, a bad file or an
unreachable broker ends with one line."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, ResourceType

from keel.kafka import delete_topics
from keel.local.ports import free_port
from tests.conftest import unique

KEEL = str(Path(sys.executable).parent / "keel")
PENDING = 3  # keel.cli.topics.EXIT_PENDING


def _keel(bootstrap: str, *args: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEL_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [KEEL, "topics", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def prefix(admin: AdminClient) -> Iterator[str]:
    """A name prefix only this test uses; its topics are deleted afterwards."""
    name = unique("test-topics")
    yield name
    delete_topics(admin, [t for t in admin.list_topics(timeout=30).topics if t.startswith(name)])


def _write(path: Path, topics: list[tuple[str, int, dict[str, object]]]) -> Path:
    lines = []
    for name, partitions, config in topics:
        lines += ["[[topics]]", f'name = "{name}"', f"partitions = {partitions}"]
        if config:
            lines.append("[topics.config]")
            lines += [f'"{k}" = {json.dumps(v)}' for k, v in config.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _partitions(admin: AdminClient, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=30).topics[topic].partitions)


def _configs(admin: AdminClient, topic: str) -> dict[str, str]:
    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {k: v.value for k, v in future.result(timeout=30).items()}


def _eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def _plan_json(bootstrap: str, file: Path) -> tuple[int, dict[str, Any]]:
    result = _keel(bootstrap, "plan", "--file", str(file), "--json")
    assert result.returncode in (0, PENDING), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_apply_creates_the_declared_topics_and_a_second_plan_is_empty(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    orders, audit = f"{prefix}-orders", f"{prefix}-audit"
    file = _write(
        tmp_path / "topics.toml",
        [
            (orders, 3, {"retention.ms": 3600000, "cleanup.policy": "compact"}),
            (audit, 1, {"min.compaction.lag.ms": 5000}),
        ],
    )

    shown = _keel(kafka_bootstrap, "plan", "-f", str(file))
    assert shown.returncode == PENDING, shown.stderr
    assert f"+ {orders}  create: partitions 3" in shown.stdout
    assert f"+ {audit}  create: partitions 1" in shown.stdout
    assert shown.stdout.rstrip().splitlines()[-1].startswith("plan: 2 to create")
    code, plan = _plan_json(kafka_bootstrap, file)
    assert code == PENDING
    creates = {c["topic"]: c for c in plan["changes"] if c["action"] == "create"}
    assert creates.keys() == {orders, audit}
    assert creates[orders]["config"] == {"retention.ms": "3600000", "cleanup.policy": "compact"}
    topics = admin.list_topics(timeout=30).topics
    assert orders not in topics and audit not in topics  # plan changes nothing

    applied = _keel(kafka_bootstrap, "apply", "-f", str(file), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert "applied: 2 created" in applied.stdout
    # apply returns once the cluster shows it: no polling needed to read it back
    assert _partitions(admin, orders) == 3 and _partitions(admin, audit) == 1
    config = _configs(admin, orders)
    assert config["retention.ms"] == "3600000" and config["cleanup.policy"] == "compact"
    assert _configs(admin, audit)["min.compaction.lag.ms"] == "5000"

    again = _keel(kafka_bootstrap, "plan", "-f", str(file))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.rstrip().splitlines()[-1].startswith("no changes:")
    code, plan = _plan_json(kafka_bootstrap, file)
    assert (code, plan["pending"], plan["changes"], plan["refused"]) == (0, False, [], [])
    assert orders not in plan["unmanaged"]

    second = _keel(kafka_bootstrap, "apply", "-f", str(file), "--yes")
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stdout


def test_raised_partitions_and_a_changed_config_show_and_apply(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    topic = f"{prefix}-grow"
    file = tmp_path / "topics.toml"
    _write(file, [(topic, 2, {"retention.ms": 3600000, "cleanup.policy": "delete"})])
    assert _keel(kafka_bootstrap, "apply", "-f", str(file), "-y").returncode == 0

    _write(file, [(topic, 5, {"retention.ms": 7200000, "cleanup.policy": "delete"})])
    shown = _keel(kafka_bootstrap, "plan", "-f", str(file))
    assert shown.returncode == PENDING, shown.stderr
    assert f"~ {topic}  partitions 2 -> 5" in shown.stdout
    assert f"~ {topic}  retention.ms: 3600000 -> 7200000" in shown.stdout
    assert "cleanup.policy" not in shown.stdout  # unchanged keys are not shown
    _, plan = _plan_json(kafka_bootstrap, file)
    assert plan["changes"] == [
        {"action": "partitions", "topic": topic, "from": 2, "to": 5},
        {
            "action": "config",
            "topic": topic,
            "key": "retention.ms",
            "from": "3600000",
            "to": "7200000",
        },
    ]

    applied = _keel(kafka_bootstrap, "apply", "-f", str(file), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert _partitions(admin, topic) == 5
    assert _configs(admin, topic)["retention.ms"] == "7200000"
    assert _keel(kafka_bootstrap, "plan", "-f", str(file)).returncode == 0


def test_fewer_partitions_are_refused_and_nothing_changes(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    kept, fresh = f"{prefix}-kept", f"{prefix}-fresh"
    file = tmp_path / "topics.toml"
    _write(file, [(kept, 3, {"retention.ms": 3600000})])
    assert _keel(kafka_bootstrap, "apply", "-f", str(file), "-y").returncode == 0

    # A refused item stops the whole apply: the valid config change and create wait too.
    _write(file, [(kept, 2, {"retention.ms": 7200000}), (fresh, 1, {})])
    shown = _keel(kafka_bootstrap, "plan", "-f", str(file))
    assert shown.returncode == PENDING
    assert f"! {kept}  cannot: partitions 3 -> 2: Kafka cannot remove partitions" in shown.stdout

    refused = _keel(kafka_bootstrap, "apply", "-f", str(file), "--yes")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("keel: error: refusing to apply")
    assert "Traceback" not in refused.stderr
    assert _partitions(admin, kept) == 3
    assert _configs(admin, kept)["retention.ms"] == "3600000"
    assert fresh not in admin.list_topics(timeout=30).topics


def test_a_value_the_brokers_reject_is_refused_before_anything_changes(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    good, bad = f"{prefix}-good", f"{prefix}-bad"
    file = _write(
        tmp_path / "topics.toml", [(good, 1, {}), (bad, 1, {"cleanup.policy": "sometimes"})]
    )
    shown = _keel(kafka_bootstrap, "plan", "-f", str(file))
    assert shown.returncode == PENDING
    assert f"! {bad}  cannot: the brokers reject it: Invalid value sometimes" in shown.stdout

    refused = _keel(kafka_bootstrap, "apply", "-f", str(file), "--yes")
    assert refused.returncode == 1
    topics = admin.list_topics(timeout=30).topics
    assert good not in topics and bad not in topics


def test_apply_off_a_terminal_needs_yes(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    topic = f"{prefix}-ask"
    file = _write(tmp_path / "topics.toml", [(topic, 1, {})])
    result = _keel(kafka_bootstrap, "apply", "-f", str(file), stdin="y\n")
    assert result.returncode == 1
    assert "refusing to apply without --yes: stdin is not a terminal" in result.stderr
    assert f"+ {topic}" in result.stdout  # the plan is still shown
    assert topic not in admin.list_topics(timeout=30).topics


def test_a_topic_created_elsewhere_meanwhile_is_seen_by_plan(
    kafka_bootstrap: str, admin: AdminClient, prefix: str, tmp_path: Path
) -> None:
    """A topic made outside the file, then declared: plan reads the cluster, not a state file."""
    topic = f"{prefix}-outside"
    file = _write(tmp_path / "topics.toml", [(topic, 2, {})])
    assert _keel(kafka_bootstrap, "apply", "-f", str(file), "-y").returncode == 0
    _write(file, [(topic, 4, {})])
    grown = admin.create_partitions([NewPartitions(topic, 4)])  # someone grows it by hand first
    grown[topic].result(timeout=30)
    _eventually(lambda: _partitions(admin, topic) == 4, "4 partitions visible")
    assert _keel(kafka_bootstrap, "plan", "-f", str(file)).returncode == 0


def test_a_bad_file_exits_non_zero_naming_the_topic_and_field(tmp_path: Path) -> None:
    file = tmp_path / "topics.toml"
    file.write_text('[[topics]]\nname = "orders"\npartitions = 0\n')
    # No broker is needed (or asked): the file is checked first.
    result = _keel(f"127.0.0.1:{free_port()}", "plan", "-f", str(file))
    assert result.returncode == 1
    assert result.stderr == (
        f"keel: error: {file}: topic 'orders' (topics[0]): partitions: must be >= 1 (got 0)\n"
    )
    missing = _keel(f"127.0.0.1:{free_port()}", "apply", "-f", str(tmp_path / "none.toml"))
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("none.toml: no such file")


def test_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    file = _write(tmp_path / "topics.toml", [("anything", 1, {})])
    nobody = f"127.0.0.1:{free_port()}"
    result = _keel(nobody, "plan", "-f", str(file), "--timeout", "2")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()  # no librdkafka connection log, no traceback
    assert line.startswith(f"keel: error: Kafka at {nobody}: listing topics: ")


@pytest.mark.parametrize(("answer", "created"), [("n", False), ("y", True)])
def test_apply_on_a_terminal_asks_first(
    kafka_bootstrap: str,
    admin: AdminClient,
    prefix: str,
    tmp_path: Path,
    answer: str,
    created: bool,
) -> None:
    topic = f"{prefix}-tty"
    file = _write(tmp_path / "topics.toml", [(topic, 1, {})])
    primary, secondary = pty.openpty()  # stdin is a terminal, as for a person at a shell
    try:
        os.write(primary, f"{answer}\n".encode())
        result = subprocess.run(
            [KEEL, "topics", "apply", "-f", str(file)],
            env={**os.environ, "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap},
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(primary)
        os.close(secondary)
    assert "Apply these changes?" in result.stdout
    assert result.returncode == (0 if created else 1), result.stderr
    assert (topic in admin.list_topics(timeout=30).topics) is created
    if not created:
        assert "apply cancelled: nothing changed" in result.stderr
