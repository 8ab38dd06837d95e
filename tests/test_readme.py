"""The README's `keel` examples are real commands: each line of a shell block that starts
with `keel` parses against the command tree (subcommands, options, argument types), so the
front door cannot drift from the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer._click import exceptions as click_errors  # typer vendors its own click

from keel.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("keel ")]


def test_the_readme_has_keel_examples() -> None:
    assert len(_examples()) > 20


@pytest.mark.parametrize("line", _examples())
def test_each_keel_example_parses(line: str) -> None:
    command: Any = typer.main.get_command(app)
    words = shlex.split(line)[1:]
    path = ["keel"]
    while hasattr(command, "commands") and words and words[0] in command.commands:
        path.append(words[0])
        command = command.commands[words.pop(0)]
    assert not hasattr(command, "commands"), f"{line!r}: {' '.join(path)} is not a command"
    try:
        command.make_context(" ".join(path), list(words), resilient_parsing=False)
    except click_errors.UsageError as exc:
        pytest.fail(f"README example {line!r} does not parse: {exc.format_message()}")
