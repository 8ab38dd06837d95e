"""The connectors' part of the local stack (`keel up`), on the stack's own PostgreSQL and
Kafka: the outbox relay (its table created at start, so a service can try the outbox at
once), the PostgreSQL sink (every event queryable in `keel_events`) and the archive sink
(hourly files under KEEL_HOME/archive). The webhook sink needs subscribers' URLs: it joins
when its subscriptions file exists (KEEL_WEBHOOKS_SUBSCRIPTIONS or KEEL_HOME/webhooks.toml).
Each sink is a consumer group `keel scale` runs replicas of (`pgsink-2` on its port + 100, ...)."""

from __future__ import annotations

from keel.local.scaling import Scalable, replica_name, replica_port
from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def _connector(
    settings: KeelSettings, name: str, port: int, principal: str, *command: str
) -> ProcessService:
    return ProcessService(
        name,
        python_module("keel.connectors", *command, "--http-port", str(port)),
        settings,
        port=port,
        ops_url=f"http://127.0.0.1:{port}",
        order=70,
        principal=principal,  # its Kafka principal of acls.toml (secured stack)
    )


def services(settings: KeelSettings) -> list[Service]:
    stack: list[Service] = [
        _connector(
            settings,
            "outbox-relay",
            settings.outbox_http_port,
            "keel-outbox",
            "outbox",
            "run",
            "--init",
        )
    ]
    return stack + [sink.replica(1) for sink in scaling(settings)]


def scaling(settings: KeelSettings) -> list[Scalable]:
    """The sinks' consumer groups; replica 1 is the sink `keel up` runs."""
    from keel.connectors.webhooks_cli import subscriptions_path

    def sink(  # noqa: PLR0917 - one row of the table below
        name: str, alias: str, port: int, group: str, topics: str, principal: str, *command: str
    ) -> Scalable:
        def replica(index: int) -> ProcessService:
            return _connector(
                settings, replica_name(name, index), replica_port(port, index), principal, *command
            )

        read = tuple(t.strip() for t in topics.split(",") if t.strip())
        return Scalable(name, group, read, replica, aliases=(alias,))

    sinks = [
        sink("pgsink", "pgsink", settings.pgsink_http_port, settings.pgsink_group,
             settings.pgsink_topics, "keel-pgsink", "pgsink", "run", "--init"),
        sink("archive-sink", "archive", settings.archive_http_port, settings.archive_group,
             settings.archive_topics, "keel-archive", "archive", "run"),
    ]  # fmt: skip
    subscriptions = subscriptions_path(settings)
    if subscriptions.exists():
        # The file that made it join, by name; a bad one fails its start, naming the field.
        command = ("webhooks", "run", "--subscriptions", str(subscriptions))
        sinks.append(
            sink("webhook-sink", "webhooks", settings.webhooks_http_port, settings.webhooks_group,
                 settings.webhooks_topics, "keel-webhooks", *command)
        )  # fmt: skip
    return sinks
