"""The `keel` console script itself: every command answers --help, bad arguments fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from keel.cli import app

KEEL = str(Path(sys.executable).parent / "keel")


def _paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # typer vendors its own click: walk groups by their `commands` mapping.
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            paths += _paths(sub, (*prefix, name))
    return paths


ALL_COMMANDS = _paths(typer.main.get_command(app))


def test_core_commands_exist() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"broker up", "broker down", "broker status", "up", "down", "status"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "keel")
def test_every_command_answers_help(path: tuple[str, ...]) -> None:
    result = subprocess.run([KEEL, *path, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage: keel" in result.stdout


@pytest.mark.parametrize("args", [("nope",), ("broker", "up", "--brokers", "2")])
def test_bad_arguments_exit_non_zero_with_a_message(args: tuple[str, ...]) -> None:
    result = subprocess.run([KEEL, *args], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert result.stderr.strip()


def test_an_invalid_setting_is_one_line_naming_it() -> None:
    env = {**os.environ, "KEEL_BROKER_PORT": "not-a-port"}
    result = subprocess.run(
        [KEEL, "broker", "status"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("keel: error: invalid setting: KEEL_BROKER_PORT:")
    assert "Traceback" not in result.stderr
