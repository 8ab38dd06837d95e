"""The clear, one-line errors of `keel broker up`, and the jar fetch itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from keel.errors import LocalStackError
from keel.local import kafka_dist
from keel.local.ports import free_base_port

KEEL = str(Path(sys.executable).parent / "keel")


def _keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEEL, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_mvn_reason_keeps_the_line_that_says_why() -> None:
    output = (
        "[INFO] Scanning\n"
        "[ERROR] Failed to execute goal on project x: Could not resolve dependencies\n"
        "[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:pom:4.4.0 from/to central: "
        "Connect to 127.0.0.1:1 failed\n"
    )
    assert kafka_dist._mvn_reason(output).startswith("Could not transfer artifact")


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalStackError, match="no `java` is on PATH"):
        kafka_dist.java_binary()


def test_taken_port_ends_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "KEEL_HOME": str(tmp_path)}
        result = _keel("broker", "up", "--port", str(port), env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"keel: error: port {port} on 127.0.0.1 is taken by another process; stop it or choose "
        "another base port (KEEL_BROKER_PORT or --port)"
    )


def test_unreachable_maven_central_is_named(tmp_path: Path) -> None:
    # A mirror on a closed port and an empty local repository: as if Central were down.
    settings = tmp_path / "settings.xml"
    settings.write_text(
        f"""<settings><localRepository>{tmp_path / "m2"}</localRepository>
        <mirrors><mirror><id>down</id><mirrorOf>*</mirrorOf><url>http://127.0.0.1:1/maven2</url>
        </mirror></mirrors></settings>"""
    )
    env = {**os.environ, "KEEL_HOME": str(tmp_path / "home"), "KEEL_MAVEN_SETTINGS": str(settings)}
    result = _keel("broker", "up", "--port", str(free_base_port()), env=env)
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("keel: error:")]
    assert len(lines) == 1
    assert "could not fetch Kafka" in lines[0] and "Maven Central" in lines[0]
    assert not (tmp_path / "home" / "kafka" / "4.4.0" / "libs").exists()


def test_cached_jars_are_not_fetched_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The marker of a complete fetch is all it takes: no Maven is even looked for.
    libs = tmp_path / "plugin"
    libs.mkdir()
    (libs / ".complete").touch()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    got = kafka_dist.maven_jars(tmp_path / "pom.xml", libs, what="x", must_have="x.jar")
    assert got == libs


def test_missing_maven_names_what_it_was_fetching(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LocalStackError, match=r"jars of Debezium 3\.6\.1\.Final"):
        kafka_dist.maven_jars(
            tmp_path / "pom.xml", tmp_path / "p", what="Debezium 3.6.1.Final", must_have="d.jar"
        )
