"""The one operational surface of every Keel process: `/healthz`, `/readyz`, `/metrics`.

Both probes answer the same JSON shape, which `keel status`, Kubernetes probes, Prometheus
and the console read alike:

    {"status": "ok" | "unavailable", "checks": {name: {"ok": bool, ...detail}}}

with 200 when every check is ok and 503 otherwise. `/healthz` says the process is alive
(its loop beats: a restart would help if not); `/readyz` says it can do its work now (in its
group, its store answers: traffic or a rollout should wait if not).

A process with a thread loop (job workers, connectors) serves them with `HealthServer`, a
small threaded server beside its loop; an aiohttp process (ingest, registry, the webhook
sink) adds `routes(...)` to its app; the Faust stream workers answer with `answer(...)`
from their own web views. This module never imports a component.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

OK = "ok"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Check:
    """One named check of a probe: ok or not, and what an operator needs to see why."""

    ok: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.detail}


Checks = Mapping[str, Check]
Probe = Callable[[], Checks]


def check(ok: bool, **detail: Any) -> Check:
    return Check(bool(ok), detail)


def beating(last_beat: float, stale_after: float, now: float | None = None) -> Check:
    """A loop's liveness: its last beat (monotonic seconds) is younger than `stale_after`."""
    age = (time.monotonic() if now is None else now) - last_beat
    return check(age < stale_after, last_beat_s=round(age, 1), stale_after_s=stale_after)


def answer(checks: Checks) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of a probe, in the one shape (no checks: not ok)."""
    ok = bool(checks) and all(c.ok for c in checks.values())
    body = {
        "status": OK if ok else UNAVAILABLE,
        "checks": {name: c.as_dict() for name, c in checks.items()},
    }
    return (200 if ok else 503), body


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def failed_probe(exc: BaseException) -> Checks:
    """A probe that raised is a failed check naming the error, never a 500."""
    return {"probe": check(False, error=f"{type(exc).__name__}: {exc}")}


def _run(probe: Probe) -> Checks:
    try:
        return probe()
    except Exception as exc:
        return failed_probe(exc)


def naming_security(checks: Checks) -> Checks:
    """A failing probe of a process whose Kafka clients were refused for a security reason
    (wrong password, untrusted CA, missing ACL; keel.kafka records it) says so in a `kafka`
    check: one line naming the principal, never the password."""
    if all(c.ok for c in checks.values()):
        return checks
    from keel.kafka import recent_security_cause  # only processes with Kafka clients record

    cause = recent_security_cause()
    return checks if cause is None else {**checks, "kafka": check(False, error=cause)}


class HealthServer:
    """`/healthz`, `/readyz` and `/metrics` on a thread beside a process's own loop.

    `healthz` and `readyz` give the checks of each probe; `metrics` the Prometheus text.
    Binding errors (a taken port) raise OSError from the constructor; port 0 takes a free
    one (`port` then tells which).
    """

    def __init__(
        self,
        name: str,
        port: int,
        *,
        healthz: Probe,
        readyz: Probe,
        metrics: Callable[[], bytes],
        host: str = "0.0.0.0",
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    status, body = answer(_run(healthz))
                    self._send(status, json.dumps(body).encode(), "application/json")
                elif path == "/readyz":
                    status, body = answer(naming_security(_run(readyz)))
                    self._send(status, json.dumps(body).encode(), "application/json")
                else:
                    missing = json.dumps({"error": f"no such path {path}"}).encode()
                    self._send(404, missing, "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # no access log
                return

        self.name = name
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"{name}-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("%s: health and metrics on port %d", self.name, self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(
    make: Callable[[int], HealthServer], port: int, variable: str, error: type[Exception]
) -> Iterator[HealthServer | None]:
    """The endpoints on `port` (0: none) while the block runs. A port that cannot be bound
    ends the command with `error`, one line naming the setting `variable`."""
    if not port:
        yield None
        return
    try:
        server = make(port)
    except OSError as exc:
        raise error(f"{variable} {port}: {exc.strerror}") from None
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Loop(Protocol):
    """A connector or worker run as a command: checked, then run until stopped."""

    def check(self) -> None: ...
    def run(self, stop: threading.Event) -> None: ...


L = TypeVar("L", bound=Loop)


def run_serving(
    loop: L,
    make: Callable[[L, int], HealthServer],
    port: int,
    variable: str,
    error: type[Exception],
) -> None:
    """The `run` command of a thread-loop connector: `loop.check()` (a bad setting or an
    unreachable dependency ends it here, in one line), then `loop.run` until SIGTERM/Ctrl-C
    with its endpoints on `port` (0: none); closed at the end when it has a `close`."""
    from keel.signals import stop_on_signals

    try:
        loop.check()
        with serving(lambda p: make(loop, p), port, variable, error):
            loop.run(stop_on_signals())
    finally:
        close = getattr(loop, "close", None)
        if close is not None:
            close()


def routes(
    *,
    healthz: Callable[[web.Application], Awaitable[Checks]],
    readyz: Callable[[web.Application], Awaitable[Checks]],
    metrics: Callable[[web.Application], Awaitable[bytes]],
) -> list[web.RouteDef]:
    """The three endpoints as aiohttp routes, for a process that is an aiohttp app; each
    callable is given the app."""
    from aiohttp import web

    def probe(
        run: Callable[[web.Application], Awaitable[Checks]], ready: bool = False
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            try:
                checks = await run(request.app)
            except Exception as exc:
                checks = failed_probe(exc)
            status, body = answer(naming_security(checks) if ready else checks)
            return web.json_response(body, status=status)

        return handler

    async def metrics_handler(request: web.Request) -> web.Response:
        body = await metrics(request.app)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        web.get("/healthz", probe(healthz)),
        web.get("/readyz", probe(readyz, ready=True)),
        web.get("/metrics", metrics_handler),
    ]


def loop_server(
    name: str,
    port: int,
    *,
    registry: CollectorRegistry,
    heartbeat: Callable[[], float],
    stale_after: float,
    ready: Probe,
) -> HealthServer:
    """The server of a process whose work is one loop on a thread: alive while the loop's
    `heartbeat` (monotonic time of its last beat) is younger than `stale_after` seconds;
    ready when alive and every check of `ready` is ok."""

    def healthz() -> Checks:
        return {"loop": beating(heartbeat(), stale_after)}

    def readyz() -> Checks:
        return {**healthz(), **ready()}

    return HealthServer(
        name, port, healthz=healthz, readyz=readyz, metrics=lambda: metrics_text(registry)
    )
