"""Keel commands a test runs as processes: started with its environment, logging to a file
under the test's tmp_path, waited for on an HTTP endpoint, stopped with SIGTERM (SIGKILL
after a deadline), their log's tail at hand for a failure message. Each dies with the test
run if the run is killed (keel.local.process.dying_with_parent)."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from keel.local.process import dying_with_parent

KEEL = str(Path(sys.executable).parent / "keel")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error gives its status and body, no answer (0, why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:  # URLError, refused, timed out
        return 0, str(exc)


def run_keel(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`keel ARGS` run to its end, its output captured as text; `check`: a non-zero exit
    raises CalledProcessError (its output attached)."""
    return subprocess.run(
        [KEEL, *args],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class KeelProcess:
    """One started command; `port` is where it serves HTTP (0: it serves none)."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    name: str = "the process"

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        port: int = 0,
        name: str = "the process",
    ) -> Self:
        """Start `argv`, stdout and stderr to `log`. It does not wait: keep it where the
        teardown stops it first, then `wait_for(p.ready, ...)`."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                dying_with_parent(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT
            )
        return cls(process, log, port, name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def answers(self, path: str) -> bool:
        """`path` answers 200; fails at once, with the log's tail, if the process exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.tail()}")
        return self.get(path)[0] == 200

    def ready(self) -> bool:
        return self.answers("/readyz")

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def text(self, path: str) -> str:
        """The body of `path`'s 200 answer; any other answer fails naming it."""
        status, body = http_get(self.url + path)
        if status != 200:
            raise AssertionError(f"{self.name}: GET {path} gave {status}: {body[:200]}")
        return body

    def kill(self) -> None:
        """SIGKILL, as a crash would: no commit, no flush, no goodbye to the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, SIGKILL if still running after `timeout`; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def stop_gracefully(self, timeout: float = 30.0) -> int:
        """SIGTERM and the exit status, for a test that asserts the graceful stop: still
        running after `timeout` fails (with the log's tail) once SIGKILL has ended it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"{self.name} still running {timeout:.0f}s after SIGTERM:\n{self.tail()}"
                ) from None
        return self.process.returncode

    def stop_and_show(self) -> None:
        """Stop it and print its log's tail: printed in a fixture's teardown, pytest shows it
        under a failed test, so a CI log holds the evidence after tmp_path is gone."""
        alive = self.alive()
        self.stop()
        print(f"--- {self.name} ({'alive' if alive else 'exited'}):\n{self.tail()}")
