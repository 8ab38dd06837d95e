from __future__ import annotations

import os
import sys
from pathlib import Path

from keel.local import kafka_dist
from keel.local.broker import LocalKafka
from keel.local.process import ManagedProcess
from keel.settings import get_settings
from tests.polling import wait_for


def test_start_status_stop_across_instances(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "run", tmp_path / "logs")
    pid = proc.start([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    # A second handle (as a later `keel status` would build) finds the same process.
    again = ManagedProcess("sleeper", tmp_path / "run", tmp_path / "logs")
    assert again.pid() == pid
    assert again.stop(timeout=5)
    assert not proc.is_running()
    assert not proc.pid_file.exists()


def test_a_process_that_exits_at_once_is_seen_gone_though_nobody_reaped_it(
    tmp_path: Path,
) -> None:
    """ManagedProcess keeps no handle on its child, so a child that dies stays a zombie of
    this process: it must count as gone (a service crashing at start-up fails `keel up` at
    once, with its log's tail, instead of after the whole start timeout)."""
    proc = ManagedProcess("crasher", tmp_path / "run", tmp_path / "logs")
    pid = proc.start([sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"])
    wait_for(proc.exited_early, 10, "the exited process seen as gone")
    assert not proc.pid_file.exists()
    assert "bad config" in proc.tail(5)
    os.waitpid(pid, 0)  # reap it here, as nothing else will


def test_a_recycled_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    proc = ManagedProcess("ghost", tmp_path / "run", tmp_path / "logs")
    proc.run_dir.mkdir(parents=True)
    # pid 1 runs, but with another start time than the one recorded.
    proc.pid_file.write_text("1 999999999\n")
    assert proc.pid() is None
    assert not proc.pid_file.exists()


def test_a_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    """KRaft ids are base64url: one in 64 starts with '-', which must not read as a flag."""
    settings = get_settings()
    cluster = LocalKafka(
        tmp_path, libs_home=settings.home, version=settings.kafka_version, base_port=45000
    )
    node = cluster.nodes()[0]
    cluster._write_config(node)
    cluster._format(
        node,
        kafka_dist.kafka_libs(settings.home, settings.kafka_version),
        kafka_dist.java_binary(),
        "-AbCdEfGhIjKlMnOpQrStUv",
    )
    assert (node.data_dir / "meta.properties").exists()


def test_overrides_replace_the_brokers_defaults(tmp_path: Path) -> None:
    """A fault test shortens failure detection: its properties win over Keel's defaults."""
    settings = get_settings()
    cluster = LocalKafka(
        tmp_path, libs_home=settings.home, version=settings.kafka_version, brokers=3,
        base_port=45000, overrides={"replica.lag.time.max.ms": 8000, "min.insync.replicas": 1},
    )  # fmt: skip
    node = cluster.nodes()[1]
    cluster._write_config(node)
    lines = node.config_file.read_text().splitlines()
    assert "replica.lag.time.max.ms=8000" in lines
    assert "min.insync.replicas=1" in lines and "min.insync.replicas=2" not in lines
    assert "default.replication.factor=3" in lines  # the rest stays
