"""Monitoring in the local stack (`keel up`): the lag exporter (`keel lag --serve`), and
Prometheus scraping every Keel process with the alert rules of deploy/prometheus/.

Registered as the core's own `keel.services` entry, like a component's."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def lag_exporter(settings: KeelSettings, *, die_with_parent: bool = False) -> ProcessService:
    port = settings.lag_exporter_port
    return ProcessService(
        "lag-exporter",
        python_module("keel.cli", "lag", "--serve", str(port)),
        settings,
        port=port,
        # ready: its first read of the cluster is done, so Prometheus's first scrape has it
        health_url=f"http://127.0.0.1:{port}/readyz",
        order=25,
        die_with_parent=die_with_parent,
    )


def services(settings: KeelSettings) -> list[Service]:
    return [lag_exporter(settings)]
