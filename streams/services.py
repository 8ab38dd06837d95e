"""Stream workers in the local stack (`keel up`): KEEL_STREAMS_WORKERS processes, one
consumer group, query API ports from KEEL_STREAMS_WEB_PORT upwards."""

from __future__ import annotations

from keel.local.services import ProcessService, Service, python_module
from keel.settings import KeelSettings


def services(settings: KeelSettings) -> list[Service]:
    workers: list[Service] = []
    for index in range(settings.streams_workers):
        port = settings.streams_web_port + index
        workers.append(
            ProcessService(
                f"streams-{index + 1}",
                python_module("streams", "worker", "--port", str(port)),
                settings,
                port=port,
                ops_url=f"http://127.0.0.1:{port}",
                env={"KEEL_STREAMS_WEB_PORT": str(port)},
                order=70,
                start_timeout=120.0,
            )
        )
    return workers
