"""The local stack's part: two ingest replicas behind nginx (Debian's package), the
development key printed, and requests through nginx spread over both replicas."""

from __future__ import annotations

import gzip
import json
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from keel.apikeys import create_key, keys_file
from keel.local.security import LocalSecurity
from keel.local.services import Service
from keel.producers.services import render_nginx_conf, services
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.producers.conftest import free_port, post
from tests.producers.test_http_roundtrip import order


def _accepted(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    found = re.search(r'keel_ingest_events_accepted_total\{type="order.placed"\} ([\d.]+)', text)
    return float(found.group(1)) if found else 0.0


@contextmanager
def _behind_nginx(
    ingest_settings: KeelSettings,
) -> Iterator[tuple[str, str, list[int], list[Service]]]:
    """Both replicas and nginx started; yields nginx's URL, the development key, the
    replicas' ports and the services."""
    ports = [free_port(), free_port()]
    lb = free_port()
    settings = ingest_settings.model_copy(
        update={"ingest_replica_ports": f"{ports[0]},{ports[1]}", "ingest_lb_port": lb}
    )
    stack = sorted(services(settings), key=lambda s: s.order)
    assert [s.name for s in stack] == ["ingest-1", "ingest-2", "nginx"]
    said: list[str] = []
    try:
        for service in stack:
            service.start(said.append)
        key = next(m.split(": ")[1] for m in said if m.startswith("development API key"))
        yield f"http://127.0.0.1:{lb}", key, ports, stack
    finally:
        for service in reversed(stack):
            service.stop(said.append)


def test_two_replicas_behind_nginx(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
    with _behind_nginx(ingest_settings) as (url, key, ports, stack):
        assert all(s.status().healthy for s in stack)
        for _ in range(20):
            status, _, body = post(url, order(), key)
            assert status == 202, body
        assert all(_accepted(p) > 0 for p in ports)  # both replicas took requests
        assert sum(_accepted(p) for p in ports) == 20
    records = topic_reader(expect=20)
    assert len(records) == 20
    assert {v["source"] for *_, v in records} == {"dev"}
    assert {v["context"]["ip"] for *_, v in records} == {"127.0.0.1"}  # from X-Forwarded-For


def test_nginx_passes_large_batches_and_names_a_broken_encoding(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
    """A batch far above nginx's 16 KB in-memory body buffer is accepted however the stack
    runs (as root, nginx's worker once could not write its temp files under KEEL_HOME), and
    a body that claims gzip and is not gzip is a 400 naming the encoding, not a 500."""
    batch = {"events": [order(order_id="o-" + "x" * 200) for _ in range(400)]}
    raw = json.dumps(batch).encode()
    assert 16 * 1024 * 4 < len(raw) < ingest_settings.ingest_max_body_bytes
    with _behind_nginx(ingest_settings) as (url, key, _ports, _stack):
        status, _, body = post(url, None, key, raw=raw)
        assert status == 202, body
        status, _, body = post(
            url, None, key, raw=gzip.compress(raw), headers={"Content-Encoding": "gzip"}
        )
        assert status == 202, body
        status, _, body = post(
            url, None, key, raw=json.dumps(order()).encode(), headers={"Content-Encoding": "gzip"}
        )
        assert status == 400, body
        assert "gzip" in body["error"], body
    records = topic_reader(expect=800)
    assert len(records) == 800  # the two good batches, nothing of the broken one


def test_nginx_terminates_tls_with_the_local_ca(
    ingest_settings: KeelSettings, ingest_url: str, tmp_path: Path
) -> None:
    """With the local CA's certificate (the secured stack's), nginx answers HTTPS that a client
    trusting that CA accepts and one trusting only the system's store refuses."""
    security = LocalSecurity(tmp_path / "security")
    security.ensure()
    settings = ingest_settings.model_copy(
        update={
            "ingest_replica_ports": ingest_url.rsplit(":", 1)[1],
            "ingest_lb_port": free_port(),
            "ingest_lb_tls_port": free_port(),
        }
    )
    conf = render_nginx_conf(settings, tmp_path / "nginx", security.broker_keystore)
    nginx = subprocess.Popen(
        ["nginx", "-p", str(tmp_path / "nginx"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"https://localhost:{settings.ingest_lb_tls_port}/v1/events"
    key = create_key(keys_file(ingest_settings), "tls")
    trusted = ssl.create_default_context(cafile=str(security.ca_file))

    def send(context: ssl.SSLContext) -> int:
        request = urllib.request.Request(
            url, data=json.dumps(order()).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)

    try:
        wait_for(lambda: _tls_port_open(settings.ingest_lb_tls_port), 30, "nginx on TLS")
        assert send(trusted) == 202
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            send(ssl.create_default_context())
    finally:
        nginx.terminate()
        nginx.wait(10)


def _tls_port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
