"""Background processes tracked by pid files, so that `up`, `status` and `down` work across
separate invocations of the `keel` command."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process: tells a live pid from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    # A zombie has exited: its parent (often this process, which keeps no handle to reap
    # it) has not collected it yet. Counting it as alive made a service that crashed at
    # start-up wait out its whole start timeout instead of failing at once.
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def dying_with_parent(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` run so that the kernel sends it `sig` when its parent dies, even by SIGKILL.

    Done by util-linux's setpriv before exec, not a preexec_fn, which can deadlock in a
    forked child of a process that runs threads. setpriv execs the command, so the pid is
    the command's. The kernel's "parent" is the thread that started it: start from a thread
    that lives as long as the process should (a test's, the main one)."""
    return ["setpriv", "--pdeathsig", signal.Signals(sig).name.removeprefix("SIG"), "--", *argv]


@dataclass(frozen=True)
class ManagedProcess:
    """One named background process with its pid file and log file."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if the recorded process still runs, else None (and the stale file goes)."""
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if _start_time(pid) == started:
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = False,
        death_signal: int = signal.SIGTERM,
        user: str | None = None,
    ) -> int:
        """Start `argv` in the background, logging to `log_file`; with `die_with_parent` the
        kernel sends it `death_signal` when this process dies (see `dying_with_parent`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = list(argv)
        if die_with_parent:
            argv = dying_with_parent(argv, death_signal)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not the child
                user=user,
            )
        started = _start_time(proc.pid)
        self.pid_file.write_text(f"{proc.pid} {started}\n")
        return proc.pid

    def exited_early(self) -> bool:
        """True once the process recorded in the pid file is gone."""
        return self.pid() is None

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
        """`sig` (SIGTERM), wait up to `timeout`, then SIGKILL. True if something was stopped."""
        return bool(stop_together([self], timeout, sig))

    def kill(self) -> None:
        """SIGKILL, as a crash would: for fault tests."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _start_time(pid) is not None and not _is_zombie(pid):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            _reap(pid)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def recorded_in(run_dir: Path, log_dir: Path) -> list[ManagedProcess]:
    """Every process with a pid file in `run_dir`, whoever started it and with whatever
    settings: what `keel down` must stop, not only the services the settings name now."""
    return [ManagedProcess(p.stem, run_dir, log_dir) for p in sorted(run_dir.glob("*.pid"))]


def stop_together(
    processes: Sequence[ManagedProcess], timeout: float = 30.0, sig: int = signal.SIGTERM
) -> list[ManagedProcess]:
    """Signal every process first, then wait for all: nodes of one cluster shut down in
    parallel instead of each waiting on peers not told yet. Returns those that were running."""
    running = [(proc, pid) for proc in processes if (pid := proc.pid()) is not None]
    for _proc, pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    for _proc, pid in running:
        while _start_time(pid) is not None and not _is_zombie(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        _reap(pid)
    for proc, _pid in running:
        proc.pid_file.unlink(missing_ok=True)
    return [proc for proc, _pid in running]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _reap(pid: int) -> None:
    """Collect the exit status if the process was our own child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
