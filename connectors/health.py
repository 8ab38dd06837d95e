"""The endpoints every connector process serves, on a thread beside its loop: `/healthz`
(the loop's heartbeat is fresh), `/readyz` (alive, and the connector says it can do its
work) and `/metrics` (its Prometheus registry)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    def __init__(
        self,
        name: str,
        port: int,
        *,
        registry: CollectorRegistry,
        heartbeat: Callable[[], float],
        ready: Callable[[], bool],
        stale_after: float,
        host: str = "0.0.0.0",
    ) -> None:
        """`heartbeat` gives the monotonic time the loop last beat; older than `stale_after`
        seconds, the process is reported dead. Binding errors (a taken port) raise OSError."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, status = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path in ("/healthz", "/readyz"):
                    ok = time.monotonic() - heartbeat() < stale_after
                    if self.path == "/readyz":
                        ok = ok and ready()
                    body = json.dumps({"ok": ok}).encode()
                    ctype, status = "application/json", 200 if ok else 503
                else:
                    body, ctype, status = b"not found", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # no access log
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"{name}-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(
    make: Callable[[int], HealthServer], port: int, variable: str, error: type[Exception]
) -> Iterator[None]:
    """The endpoints on `port` (0: none) while the block runs. A port that cannot be bound
    ends the command with `error`, one line naming the setting `variable`."""
    if not port:
        yield
        return
    try:
        server = make(port)
    except OSError as exc:
        raise error(f"{variable} {port}: {exc.strerror}") from None
    server.start()
    try:
        yield
    finally:
        server.stop()
