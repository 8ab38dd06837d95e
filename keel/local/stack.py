"""The local stack: every service Keel has, started in order and stopped in reverse."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from keel.local.process import recorded_in, stop_together
from keel.local.services import (
    KafkaService,
    PostgresService,
    ProcessService,
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


def stop_stack(settings: KeelSettings, progress: Progress) -> None:
    """`keel down`: first whatever the stack started that today's settings do not name (its
    pid files: `streams-2` of a stack started with KEEL_STREAMS_WORKERS=2, stopped from a
    shell without it), then every service of the settings in reverse order. The leftovers are
    components (the core services have fixed names), so they go before the brokers they use."""
    services = stack_services(settings)
    named = {s.process.name for s in services if isinstance(s, ProcessService)}
    leftovers = [
        p for p in recorded_in(settings.home / "run", settings.home / "logs") if p.name not in named
    ]
    for process in stop_together(leftovers):
        progress(f"stopped {process.name} (not in the current settings)")
    stop_all(services, progress)


def statuses(services: list[Service]) -> list[ServiceStatus]:
    return [service.status() for service in services]
