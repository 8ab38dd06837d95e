"""Monitoring in the local stack (`keel up`): the lag exporter (`keel lag --serve`), and
Prometheus (Debian's package) scraping every Keel process, with the alert rules of
deploy/prometheus/rules.

Registered as the core's own `keel.services` entry, like a component's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from keel.local.services import ProcessService, Progress, Service, python_module
from keel.local.system import ensure_command
from keel.settings import KeelSettings

# The alert rules, in the clone `keel up` runs from (they are deployment files, not code).
RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules"
SCRAPE_INTERVAL = "15s"


def lag_exporter(settings: KeelSettings, *, die_with_parent: bool = False) -> ProcessService:
    port = settings.lag_exporter_port
    return ProcessService(
        "lag-exporter",
        python_module("keel.cli", "lag", "--serve", str(port)),
        settings,
        port=port,
        # ready: its first read of the cluster is done, so Prometheus's first scrape has it
        health_url=f"http://127.0.0.1:{port}/readyz",
        ops_url=f"http://127.0.0.1:{port}",
        order=25,
        die_with_parent=die_with_parent,
    )


def keel_targets(services: list[Service]) -> dict[str, str]:
    """job name -> host:port of every Keel process of the stack (a Python process of this
    interpreter with a health URL: each serves /metrics beside it), nginx and stores aside."""
    return {
        f"keel-{s.name}": f"127.0.0.1:{s.port}"
        for s in services
        if isinstance(s, ProcessService) and s.health_url and s.argv[:1] == [sys.executable]
    }


def prometheus_config(targets: dict[str, str], rule_files: list[str]) -> dict[str, object]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in sorted(targets.items())
        ],
    }


class PrometheusService(ProcessService):
    """Prometheus on KEEL_PROMETHEUS_PORT, its config written at each start from the stack's
    services (so `keel scale` or KEEL_STREAMS_WORKERS add their targets), data in
    KEEL_HOME/prometheus."""

    def __init__(
        self,
        settings: KeelSettings,
        *,
        targets: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """`targets` (job -> host:port): what to scrape instead of the stack's services."""
        self.settings = settings
        self.targets = targets
        self.root = settings.home / "prometheus"
        port = settings.prometheus_port
        super().__init__(
            "prometheus",
            [],
            settings,
            port=port,
            health_url=f"http://127.0.0.1:{port}/-/ready",
            order=95,
            die_with_parent=die_with_parent,
        )

    def prepare(self, progress: Progress) -> None:
        from keel.local.stack import stack_services  # the stack lists this module's services

        binary = ensure_command("prometheus", "prometheus", progress)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        rules = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
        targets = self.targets or keel_targets(stack_services(self.settings))
        config.write_text(json.dumps(prometheus_config(targets, rules), indent=2))  # YAML's subset
        self.argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=7d",
        ]


def services(settings: KeelSettings) -> list[Service]:
    found: list[Service] = [lag_exporter(settings)]
    if settings.prometheus_port:
        found.append(PrometheusService(settings))
    return found
