"""The job component's part of the local stack (`keel up`): the SMTP server that keeps mail
in the outbox, and one job worker running every job type; `keel scale jobs-TYPE N` adds
workers of that type alone to its group (the shared worker is its first member)."""

from __future__ import annotations

from keel.local.scaling import Scalable, replica_port
from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def services(settings: KeelSettings) -> list[Service]:
    return [
        ProcessService(
            "smtp",
            python_module(
                "keel.consumers",
                "smtp",
                "--port",
                str(settings.smtp_port),
                "--outbox",
                str(settings.jobs_outbox_dir or settings.home / "outbox"),
            ),
            settings,
            port=settings.smtp_port,
            order=30,
        ),
        _worker(settings, "jobs-worker", settings.jobs_http_port),
    ]


def _worker(settings: KeelSettings, name: str, port: int, *types: str) -> ProcessService:
    return ProcessService(
        name,
        python_module("keel.consumers", "worker", *types, "--http-port", str(port)),
        settings,
        port=port,
        ops_url=f"http://127.0.0.1:{port}",
        order=70,
        principal="keel-jobs",
    )


def scaling(settings: KeelSettings) -> list[Scalable]:
    """A group per job type. Replica 1 is the shared `jobs-worker`; replica i of the k-th type
    (email, report, report_ready) serves on KEEL_JOBS_HTTP_PORT + 100 (i - 1) + 10 k."""
    from keel.consumers.handlers import JOB_TYPES

    def replicas(kind: str, name: str, k: int) -> Scalable:
        def replica(index: int) -> ProcessService:
            if index == 1:
                return _worker(settings, "jobs-worker", settings.jobs_http_port)
            port = replica_port(settings.jobs_http_port + 10 * k, index)
            return _worker(settings, f"{name}-{index}", port, kind)

        source = JOB_TYPES[kind](settings).topics.source
        group = f"{settings.jobs_topic_prefix}keel.jobs.{kind}"
        return Scalable(name, group, (source,), replica, aliases=(kind,))

    return [replicas(kind, f"jobs-{kind.replace('_', '-')}", k) for k, kind in enumerate(JOB_TYPES)]
