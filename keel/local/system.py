"""Debian packages the local stack needs (Redis, PostgreSQL, nginx, ...), installed on demand."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable

from keel.errors import LocalStackError

Progress = Callable[[str], None]


def ensure_command(command: str, package: str, progress: Progress = print) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    install_packages([package], progress)
    found = shutil.which(command)
    if not found:
        raise LocalStackError(
            f"installed Debian package {package} but `{command}` is still not on PATH"
        )
    return found


def install_packages(packages: list[str], progress: Progress = print) -> None:
    if os.geteuid() != 0:
        raise LocalStackError(
            f"{', '.join(packages)} missing: install with `sudo apt-get install -y {' '.join(packages)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    progress(f"installing Debian package(s) {', '.join(packages)} ...")
    _apt_update()
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env, packages)


@functools.cache
def _apt_update() -> None:
    """Once per process: package lists are stale on a fresh machine."""
    _run(["apt-get", "update", "-q"], {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, [])


def _run(cmd: list[str], env: dict[str, str], packages: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise LocalStackError(
            f"`{' '.join(cmd[:2])}` failed for {', '.join(packages)}: {lines[-1] if lines else '?'}"
        )
