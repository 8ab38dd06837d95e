"""Debian packages the local stack needs (Redis, PostgreSQL, nginx, ...), installed on demand."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from keel.errors import LocalStackError

Progress = Callable[[str], None]


def ensure_command(command: str, package: str, progress: Progress = print) -> str:
    """The path of `command`, installing Debian's `package` first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    with _apt_lock():  # another process may have been installing it meanwhile
        if not shutil.which(command):
            _install([package], progress)
    found = shutil.which(command)
    if not found:
        raise LocalStackError(
            f"installed Debian package {package} but `{command}` is still not on PATH"
        )
    return found


def install_packages(packages: list[str], progress: Progress = print) -> None:
    with _apt_lock():
        _install(packages, progress)


@contextmanager
def _apt_lock() -> Iterator[None]:
    """One install at a time across processes (two test workers, or `keel up` beside them):
    apt-get refuses outright, not waits, while another holds dpkg's lock."""
    folder = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    with open(folder / "keel-apt.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


# apt's own wait for dpkg's lock, for an apt run that is not Keel's (unattended upgrades).
_WAIT_FOR_DPKG = ["-o", "DPkg::Lock::Timeout=600"]


def _install(packages: list[str], progress: Progress) -> None:
    if os.geteuid() != 0:
        raise LocalStackError(
            f"{', '.join(packages)} missing: install with `sudo apt-get install -y {' '.join(packages)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    progress(f"installing Debian package(s) {', '.join(packages)} ...")
    _apt_update()
    _apt(["install", "-y", "-q", "--no-install-recommends", *packages], env, packages)


@functools.cache
def _apt_update() -> None:
    """Once per process: package lists are stale on a fresh machine."""
    _apt(["update", "-q"], {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, [])


def _apt(args: list[str], env: dict[str, str], packages: list[str]) -> None:
    cmd = ["apt-get", *_WAIT_FOR_DPKG, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise LocalStackError(
            f"`apt-get {args[0]}` failed for {', '.join(packages)}: {lines[-1] if lines else '?'}"
        )
