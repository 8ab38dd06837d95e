"""The local stack: every service Keel has, started in order and stopped in reverse."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from keel.local.services import (
    KafkaService,
    PostgresService,
    RedisService,
    Service,
    ServiceStatus,
)
from keel.settings import KeelSettings

Progress = Callable[[str], None]
ServiceFactory = Callable[[KeelSettings], list[Service]]


def stack_services(settings: KeelSettings) -> list[Service]:
    """The core services plus those that components register under `keel.services`."""
    services: list[Service] = [
        KafkaService(settings),
        RedisService(settings),
        PostgresService(settings),
    ]
    for entry in entry_points(group="keel.services"):
        factory: ServiceFactory = entry.load()
        services.extend(factory(settings))
    return sorted(services, key=lambda s: s.order)


def start_all(services: list[Service], progress: Progress) -> list[Service]:
    """Start in order; on a failure, stop what this call started and re-raise."""
    started: list[Service] = []
    try:
        for service in services:
            if service.start(progress):
                started.append(service)
    except BaseException:
        stop_all(started, progress)
        raise
    return started


def stop_all(services: list[Service], progress: Progress) -> None:
    for service in reversed(services):
        service.stop(progress)


def statuses(services: list[Service]) -> list[ServiceStatus]:
    return [service.status() for service in services]
