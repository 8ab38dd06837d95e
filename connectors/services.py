"""The connectors' part of the local stack (`keel up`), on the stack's own PostgreSQL and
Kafka: the outbox relay (its table created at start, so a service can try the outbox at
once), the PostgreSQL sink (every event queryable in `keel_events`) and the archive sink
(hourly files under KEEL_HOME/archive). The webhook sink needs subscribers' URLs: it joins
when its subscriptions file exists (KEEL_WEBHOOKS_SUBSCRIPTIONS or KEEL_HOME/webhooks.toml)."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def _connector(settings: KeelSettings, name: str, port: int, *command: str) -> ProcessService:
    return ProcessService(
        name,
        python_module("connectors", *command, "--http-port", str(port)),
        settings,
        port=port,
        ops_url=f"http://127.0.0.1:{port}",
        order=70,
    )


def services(settings: KeelSettings) -> list[Service]:
    from connectors.webhooks_cli import subscriptions_path

    stack: list[Service] = [
        _connector(settings, "outbox-relay", settings.outbox_http_port, "outbox", "run", "--init"),
        _connector(settings, "pgsink", settings.pgsink_http_port, "pgsink", "run", "--init"),
        _connector(settings, "archive-sink", settings.archive_http_port, "archive", "run"),
    ]
    subscriptions = subscriptions_path(settings)
    if subscriptions.exists():
        # The file that made it join, by name; a bad one fails its start, naming the field.
        command = ("webhooks", "run", "--subscriptions", str(subscriptions))
        stack.append(_connector(settings, "webhook-sink", settings.webhooks_http_port, *command))
    return stack
