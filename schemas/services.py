"""The registry's place in the local stack (`keel up`)."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def stack_services(settings: KeelSettings) -> list[Service]:
    port = settings.registry_port
    argv = python_module("keel.cli", "registry", "--port", str(port))
    health = f"http://127.0.0.1:{port}/healthz"
    return [ProcessService("registry", argv, settings, port=port, health_url=health, order=30)]
