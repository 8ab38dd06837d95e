"""The registry joins `keel up` through the `keel.services` entry point: the service it
declares starts a registry that serves on the stack's port from the stack's topic."""

from __future__ import annotations

import uuid
from importlib.metadata import entry_points
from pathlib import Path

import requests

from keel.local.ports import free_base_port
from keel.settings import KeelSettings


def test_registry_service_from_the_entry_point(kafka_bootstrap: str, tmp_path: Path) -> None:
    (entry,) = [e for e in entry_points(group="keel.services") if e.name == "registry"]
    port, topic = free_base_port(), f"_schemas-stack-{uuid.uuid4().hex[:8]}"
    settings = KeelSettings(home=tmp_path, registry_port=port, registry_topic=topic,
                            bootstrap_servers=kafka_bootstrap)  # fmt: skip
    (service,) = entry.load()(settings)
    assert service.name == "registry" and service.port == port
    try:
        assert service.start(lambda _message: None)
        url = f"http://127.0.0.1:{port}"
        schema = '{"type": "record", "name": "S", "fields": [{"name": "a", "type": "int"}]}'
        registered = requests.post(f"{url}/subjects/s-value/versions", json={"schema": schema},
                                   timeout=10)  # fmt: skip
        assert registered.status_code == 200, registered.text
        assert requests.get(f"{url}/subjects", timeout=10).json() == ["s-value"]
    finally:
        service.stop(lambda _message: None)
    assert not service.healthy()
    # Its state went to the stack's own topic: a fresh start serves the same id.
    try:
        assert service.start(lambda _message: None)
        again = requests.get(f"http://127.0.0.1:{port}/subjects/s-value/versions/1", timeout=10)
        assert again.json()["id"] == registered.json()["id"]
    finally:
        service.stop(lambda _message: None)
