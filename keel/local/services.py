"""The services of the local stack: each starts (or reuses what runs), stops and reports.

Components add their own through the `keel.services` entry point: a callable taking the
settings and returning a list of `Service`, usually `ProcessService`s.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from keel.errors import LocalStackError
from keel.local.broker import LocalKafka
from keel.local.process import ManagedProcess
from keel.local.system import ensure_command, install_packages
from keel.settings import KeelSettings

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    detail: str
    url: str | None = None  # where it serves /healthz, /readyz, /metrics (keel.health)
    readiness: dict[str, Any] | None = None  # its /readyz body, when it serves one

    @property
    def ready(self) -> bool:
        """Healthy and, for a process that serves /readyz, ready by it."""
        return self.healthy and (self.readiness is None or self.readiness.get("status") == "ok")

    def unready_checks(self) -> list[str]:
        checks = (self.readiness or {}).get("checks", {})
        return [name for name, c in checks.items() if not c.get("ok")]


class Service(ABC):
    """One part of the local stack. `order` decides start order (stop is the reverse)."""

    name: str
    order: int = 50

    @abstractmethod
    def start(self, progress: Progress) -> bool:
        """Start, or reuse what runs; True if this call started it."""

    @abstractmethod
    def stop(self, progress: Progress) -> bool:
        """Stop; True if something was stopped."""

    @abstractmethod
    def status(self) -> ServiceStatus: ...


def local_kafka(
    settings: KeelSettings,
    brokers: int = 1,
    base_port: int | None = None,
    *,
    secure: bool = False,
    principals: tuple[str, ...] = (),
) -> LocalKafka:
    return LocalKafka(
        settings.home / "broker",
        libs_home=settings.home,
        version=settings.kafka_version,
        brokers=brokers,
        base_port=base_port or settings.broker_port,
        heap=settings.broker_heap,
        maven_settings=settings.maven_settings,
        secure=secure,
        principals=principals,
    )


class KafkaService(Service):
    """The local brokers; `secure` (`keel up --secure`) or a secured cluster already running
    makes the whole stack secured (keel.local.secured)."""

    name = "kafka"
    order = 10

    def __init__(self, settings: KeelSettings, *, secure: bool = False) -> None:
        self.settings = settings
        self.secure = secure
        self.cluster = local_kafka(settings)

    def start(self, progress: Progress) -> bool:
        from keel.local.secured import StackSecurity

        layout = self.cluster.recorded_layout()
        brokers, secure = 1, self.secure
        if layout and self.cluster.running_nodes():  # keep what `keel broker up` chose
            brokers, secure = int(str(layout["brokers"])), secure or bool(layout.get("secure"))
        if secure:
            stack = StackSecurity.of(self.settings, self.cluster)
            self.cluster = local_kafka(
                self.settings, brokers, secure=True, principals=tuple(stack.acls.names())
            )
        else:
            self.cluster = local_kafka(self.settings, brokers)
        was_running = len(self.cluster.running_nodes()) == self.cluster.brokers
        self.cluster.up(progress)
        if secure:
            StackSecurity.of(self.settings, self.cluster).provision(self.cluster, progress)
        return not was_running

    def stop(self, progress: Progress) -> bool:
        return self.cluster.down(progress) > 0

    def status(self) -> ServiceStatus:
        nodes = self.cluster.status()
        up = [n for n in nodes if n.pid is not None]
        healthy = bool(up) and len(up) == len(nodes) and all(_port_open(n.port) for n in up)
        detail = ", ".join(
            f"broker {n.node_id} 127.0.0.1:{n.port} pid {n.pid or '-'}" for n in nodes
        )
        return ServiceStatus(self.name, bool(up), healthy, detail)


class ProcessService(Service):
    """A long-running process of the stack, healthy when its port (or health URL) answers.

    With `die_with_parent` (a test run's private service) the kernel sends it `stop_signal`
    when the process that started it dies, even by SIGKILL, as the test broker does."""

    stop_signal: int = signal.SIGTERM

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        settings: KeelSettings,
        *,
        port: int,
        health_url: str | None = None,
        ops_url: str | None = None,
        env: Mapping[str, str] | None = None,
        order: int = 50,
        user: str | None = None,
        start_timeout: float = 60.0,
        die_with_parent: bool = False,
        principal: str | None = None,
    ) -> None:
        self.name = name
        # Its Kafka principal (acls.toml): on a secured local cluster it runs as that user.
        self.principal = principal
        self.settings = settings
        self.order = order
        self.argv = list(argv)
        self.port = port
        # A Keel process serves keel.health's surface at `ops_url`: started once /healthz
        # answers (unless `health_url` says otherwise), ready by its /readyz.
        self.ops_url = ops_url
        self.health_url = health_url or (f"{ops_url}/healthz" if ops_url else None)
        self.env = {**os.environ, **(env or {})}
        self.user = user
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.process = ManagedProcess(name, settings.home / "run", settings.home / "logs")

    def start(self, progress: Progress) -> bool:
        if self.process.is_running():
            progress(f"{self.name} already running (pid {self.process.pid()})")
            return False
        _check_port(self.port, self.name)
        self.prepare(progress)
        progress(f"starting {self.name} on 127.0.0.1:{self.port} (log: {self.process.log_file})")
        self.process.start(
            self.argv,
            env={**self.env, **self.security_env()},
            user=self.user,
            die_with_parent=self.die_with_parent,
            death_signal=self.stop_signal,
        )
        try:
            self._wait_healthy()
            self.after_start(progress)
        except BaseException:
            # Not ours to leave behind: a half-started service would hold its port, and a
            # later `up` would take it for running.
            self.stop(progress)
            raise
        return True

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self.healthy():
            if self.process.exited_early():
                raise LocalStackError(
                    f"{self.name} exited during start-up:\n{self.process.tail(8)}"
                )
            if time.monotonic() > deadline:
                raise LocalStackError(
                    f"{self.name} not healthy after {self.start_timeout:.0f}s; see {self.process.log_file}"
                )
            time.sleep(0.2)

    def after_start(self, progress: Progress) -> None:
        """Hook run once the process is healthy (create roles, databases, ...)."""

    def security_env(self) -> dict[str, str]:
        """Its identity on a secured local cluster (none otherwise, or without a principal)."""
        from keel.local.secured import running_secured

        found = running_secured(self.settings) if self.principal else None
        return found[1].client_env(str(self.principal)) if found else {}

    def prepare(self, progress: Progress) -> None:
        """Hook run before the first start (install, initialise data)."""

    def stop(self, progress: Progress) -> bool:
        if self.process.stop(sig=self.stop_signal):
            progress(f"stopped {self.name}")
            return True
        return False

    def healthy(self) -> bool:
        if self.health_url:
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    return bool(200 <= response.status < 300)
            except (urllib.error.URLError, OSError):
                return False
        return _port_open(self.port)

    def status(self) -> ServiceStatus:
        pid = self.process.pid()
        healthy = pid is not None and self.healthy()
        readiness = self.readiness() if healthy and self.ops_url else None
        return ServiceStatus(
            self.name,
            pid is not None,
            healthy,
            f"127.0.0.1:{self.port} pid {pid or '-'}",
            url=self.ops_url,
            readiness=readiness,
        )

    def readiness(self) -> dict[str, Any]:
        """The process's /readyz body (a 503 carries one too); unreachable: unavailable."""
        try:
            with urllib.request.urlopen(f"{self.ops_url}/readyz", timeout=2) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except (urllib.error.URLError, OSError) as exc:
            return {"status": "unavailable", "checks": {"http": {"ok": False, "error": str(exc)}}}
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return {"status": "unavailable", "checks": {"http": {"ok": False, "error": "no JSON"}}}
        return parsed


class RedisService(ProcessService):
    def __init__(self, settings: KeelSettings, *, die_with_parent: bool = False) -> None:
        url = urlparse(settings.redis_url)
        port = url.port or 6379
        self.data_dir = settings.home / "redis"
        argv = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        super().__init__(
            "redis", argv, settings, port=port, order=20, die_with_parent=die_with_parent
        )

    def prepare(self, progress: Progress) -> None:
        self.argv[0] = ensure_command("redis-server", "redis-server", progress)
        self.data_dir.mkdir(parents=True, exist_ok=True)


class PostgresService(ProcessService):
    """PostgreSQL from Debian's binaries with its own data folder, role and database.

    As root it runs as the `postgres` user (PostgreSQL refuses root), with data under
    that user's home since root's home is not readable by it.
    """

    # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients and stops cleanly.
    # SIGTERM ("smart") waits for every client to leave, so a connected pool (or, after a
    # killed test run, its orphaned subprocesses) would hold it until a SIGKILL.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        settings: KeelSettings,
        *,
        die_with_parent: bool = False,
        options: Sequence[str] = (),
    ) -> None:
        """`options`: extra `name=value` server settings (`-c`), e.g. `wal_level=logical`."""
        self.options = tuple(options)
        dsn = urlparse(settings.postgres_dsn.get_secret_value())
        self.db_user = dsn.username or "keel"
        self.db_password = dsn.password or "keel"
        self.db_name = (dsn.path or "/keel").lstrip("/") or "keel"
        port = dsn.port or 5432
        as_root = os.geteuid() == 0
        self.run_as = "postgres" if as_root else None
        self.data_dir = (
            Path(f"/var/lib/postgresql/keel-{port}") if as_root else settings.home / "postgres"
        )
        # Up to two minutes: after a crash PostgreSQL replays its WAL before it accepts anyone.
        super().__init__(
            "postgres",
            [],
            settings,
            port=port,
            order=20,
            user=self.run_as,
            start_timeout=120,
            die_with_parent=die_with_parent,
        )

    def _bin(self, name: str) -> str:
        found = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
        return found[-1] if found else ""

    def prepare(self, progress: Progress) -> None:
        if not self._bin("postgres"):
            install_packages(["postgresql"], progress)
        # Debian's package starts its own cluster on 5432; ours owns the port instead.
        if shutil.which("pg_ctlcluster") and _port_open(self.port):
            subprocess.run(
                [
                    "sh",
                    "-c",
                    "pg_lsclusters -h | awk '{print $1, $2}' | "
                    "while read v c; do pg_ctlcluster $v $c stop; done",
                ],
                check=False,
            )
        if not (self.data_dir / "PG_VERSION").exists():
            progress(f"initialising PostgreSQL data in {self.data_dir}")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.run_as:
                info = pwd.getpwnam(self.run_as)
                os.chown(self.data_dir, info.pw_uid, info.pw_gid)
            _run_checked(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
                self.run_as,
            )
        self.argv = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=/tmp",
            *(arg for option in self.options for arg in ("-c", option)),
        ]

    def after_start(self, progress: Progress) -> None:
        self._ensure_database()

    def healthy(self) -> bool:
        """Accepting connections (`pg_isready`), not merely listening: during crash recovery
        the port is open but every connection is refused."""
        ready = self._bin("pg_isready")
        if not ready:
            return _port_open(self.port)
        probe = subprocess.run(
            [ready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"], check=False
        )
        return probe.returncode == 0

    def _ensure_database(self) -> None:
        psql = [
            self._bin("psql") or "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-tAc",
        ]
        role = f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{self.db_user}') THEN CREATE ROLE {self.db_user} LOGIN PASSWORD '{self.db_password}'; END IF; END$$;"
        _run_checked([*psql, role], None)
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname='{self.db_name}'"],
            capture_output=True,
            text=True,
            check=False,
        )
        if exists.stdout.strip() != "1":
            _run_checked([*psql, f"CREATE DATABASE {self.db_name} OWNER {self.db_user}"], None)


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (IndexError, ValueError):
        return 0


def _run_checked(cmd: list[str], user: str | None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, user=user, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise LocalStackError(f"`{Path(cmd[0]).name}` failed: {lines[-1] if lines else '?'}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _check_port(port: int, name: str) -> None:
    if _port_open(port):
        raise LocalStackError(f"port {port} is taken by another process; {name} cannot start there")


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs a module with this interpreter (the virtualenv's)."""
    return [sys.executable, "-m", module, *args]
