"""The local stack: every service Keel has, started in order and stopped in reverse."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from keel.local.process import recorded_in, stop_together
from keel.local.scaling import declared, forget_counts, replicas
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


def stack_services(settings: KeelSettings, *, secure: bool = False) -> list[Service]:
    """The core services, those that components register under `keel.services`, and the
    replicas of their consumer groups (`keel.scaling`: as many as `keel scale` set, else each
    group's default). A replica that is another service of the stack (the jobs worker is the
    first of every job type) is listed once. `secure`: the brokers secured, each component as
    its own principal."""
    services: list[Service] = [
        KafkaService(settings, secure=secure),
        RedisService(settings),
        PostgresService(settings),
    ]
    for entry in entry_points(group="keel.services"):
        factory: ServiceFactory = entry.load()
        services.extend(factory(settings))
    names = {s.name for s in services}
    for replica in replicas(settings, declared(settings)):
        if replica.name not in names:
            services.append(replica)
            names.add(replica.name)
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
    shell without it, or a replica `keel scale` started), then every service of the settings in
    reverse order. The leftovers are components (the core services have fixed names), so they
    go before the brokers they use. The scaled counts are forgotten with the stack."""
    services = stack_services(settings)
    named = {s.process.name for s in services if isinstance(s, ProcessService)}
    leftovers = [
        p for p in recorded_in(settings.home / "run", settings.home / "logs") if p.name not in named
    ]
    for process in stop_together(leftovers):
        progress(f"stopped {process.name} (not in the current settings)")
    stop_all(services, progress)
    forget_counts(settings)


def statuses(services: list[Service]) -> list[ServiceStatus]:
    return [service.status() for service in services]
