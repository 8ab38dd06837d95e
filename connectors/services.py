"""The connectors' part of the local stack (`keel up`): the outbox relay on the stack's own
PostgreSQL, its table created at start, so a service can try the outbox at once. The
webhook sink needs subscribers' URLs, so it is started by hand (`keel webhooks run`)."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def services(settings: KeelSettings) -> list[Service]:
    port = settings.outbox_http_port
    return [
        ProcessService(
            "outbox-relay",
            python_module("connectors", "outbox", "run", "--init", "--http-port", str(port)),
            settings,
            port=port,
            health_url=f"http://127.0.0.1:{port}/healthz",
            order=70,
        )
    ]
