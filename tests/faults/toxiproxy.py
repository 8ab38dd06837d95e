"""Toxiproxy 2.5 between Keel's clients and the fault cluster's brokers: network latency, a
cut (a black hole: nothing gets through, connections hang) and healing, on demand.

The server is built on first use from the Go module proxy at a pinned version (into the
virtualenv, beside the deployment checks' tools, so `make clean` removes it), run on a free
port dying with the test run, and driven through its HTTP API.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from keel.local.ports import free_port
from keel.local.process import ManagedProcess
from tests.deploy.tools import TOOLS, _go, _run
from tests.polling import wait_for

MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"
BIN_DIR = TOOLS.parent / "toxiproxy-2.5.0"  # the module's command is called `server`


@cache
def server_binary() -> Path:
    binary = BIN_DIR / "server"
    if not binary.exists():
        BIN_DIR.mkdir(parents=True, exist_ok=True)
        _run([_go(), "install", MODULE], GOBIN=str(BIN_DIR))
    return binary


class Toxiproxy:
    """One server; `proxy(name, listen, upstream)` adds a TCP proxy, the rest acts on all."""

    def __init__(self, port: int) -> None:
        self.api = f"http://127.0.0.1:{port}"
        self.names: list[str] = []

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/proxies", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def proxy(self, name: str, listen: int, upstream: int) -> None:
        self._call("POST", "/proxies", {
            "name": name, "listen": f"127.0.0.1:{listen}",
            "upstream": f"127.0.0.1:{upstream}", "enabled": True,
        })  # fmt: skip
        self.names.append(name)

    def _toxic(self, kind: str, attributes: dict[str, int]) -> None:
        for name in self.names:
            for stream in ("upstream", "downstream"):
                self._call("POST", f"/proxies/{name}/toxics", {
                    "name": f"{kind}-{stream}", "type": kind, "stream": stream,
                    "toxicity": 1.0, "attributes": attributes,
                })  # fmt: skip

    def latency(self, ms: int, jitter: int = 0) -> None:
        """Every byte each way held `ms` (a slow network)."""
        self._toxic("latency", {"latency": ms, "jitter": jitter})

    def cut(self) -> None:
        """A black hole: from now on no data gets through either way and no connection is
        closed (a `timeout` toxic of 0), as a partition looks to a client."""
        self._toxic("timeout", {"timeout": 0})

    def heal(self) -> None:
        """No toxic left: data flows again (over new connections, where the old ones lost
        bytes)."""
        for name in self.names:
            for toxic in self._call("GET", f"/proxies/{name}/toxics"):
                self._call("DELETE", f"/proxies/{name}/toxics/{toxic['name']}")


@contextmanager
def toxiproxy(run_dir: Path) -> Iterator[Toxiproxy]:
    """A Toxiproxy server of this test's own, stopped at the end (or with the test run)."""
    port = free_port()
    process = ManagedProcess("toxiproxy", run_dir, run_dir)
    process.start(
        [str(server_binary()), "-host", "127.0.0.1", "-port", str(port)], die_with_parent=True
    )
    proxy = Toxiproxy(port)
    try:
        wait_for(lambda: proxy.answers() or process.exited_early(), 30, "toxiproxy answering")
        assert proxy.answers(), f"toxiproxy did not start:\n{process.tail(10)}"
        yield proxy
    finally:
        process.stop(timeout=10)
