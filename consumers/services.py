"""The job component's part of the local stack (`keel up`): the SMTP server that keeps mail
in the outbox, and one job worker running every job type."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def services(settings: KeelSettings) -> list[Service]:
    return [
        ProcessService(
            "smtp",
            python_module(
                "consumers",
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
        ProcessService(
            "jobs-worker",
            python_module("consumers", "worker", "--http-port", str(settings.jobs_http_port)),
            settings,
            port=settings.jobs_http_port,
            ops_url=f"http://127.0.0.1:{settings.jobs_http_port}",
            order=70,
        ),
    ]
