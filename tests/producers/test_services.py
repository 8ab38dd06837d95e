"""The local stack's part: two ingest replicas behind nginx (Debian's package), the
development key printed, and requests through nginx spread over both replicas."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from typing import Any

from keel.settings import KeelSettings
from producers.services import services
from tests.producers.conftest import free_port, post
from tests.producers.test_http_roundtrip import order


def _accepted(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    found = re.search(r'keel_ingest_events_accepted_total\{type="order.placed"\} ([\d.]+)', text)
    return float(found.group(1)) if found else 0.0


def test_two_replicas_behind_nginx(
    ingest_settings: KeelSettings, topic_reader: Callable[..., Any]
) -> None:
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
        assert all(s.status().healthy for s in stack)
        for _ in range(20):
            status, _, body = post(f"http://127.0.0.1:{lb}", order(), key)
            assert status == 202, body
        assert all(_accepted(p) > 0 for p in ports)  # both replicas took requests
        assert sum(_accepted(p) for p in ports) == 20
    finally:
        for service in reversed(stack):
            service.stop(said.append)
    records = topic_reader(expect=20)
    assert len(records) == 20
    assert {v["source"] for *_, v in records} == {"dev"}
    assert {v["context"]["ip"] for *_, v in records} == {"127.0.0.1"}  # from X-Forwarded-For
