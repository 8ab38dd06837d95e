"""The registry's place in the local stack (`keel up`), plugged in through the `keel.services`
entry point. It starts after the broker and before every service that encodes events."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings

ORDER = 30  # after Kafka, Redis and PostgreSQL; before ingestion, streams and jobs


def stack_services(settings: KeelSettings) -> list[Service]:
    port = settings.registry_port
    argv = python_module("keel.cli", "registry", "--port", str(port))
    # The process gets the stack's own broker and topic, whatever its environment says.
    env = {
        "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KEEL_REGISTRY_TOPIC": settings.registry_topic,
    }
    ops = f"http://127.0.0.1:{port}"
    return [
        ProcessService(
            "registry", argv, settings, port=port, health_url=f"{ops}/readyz", ops_url=ops,
            env=env, order=ORDER,
        )
    ]  # fmt: skip
