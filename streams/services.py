"""Stream workers in the local stack (`keel up`, `keel scale streams N`): one consumer group
(the app id), KEEL_STREAMS_WORKERS processes unless scaled, query API ports from
KEEL_STREAMS_WEB_PORT upwards."""

from __future__ import annotations

from keel.local.scaling import Scalable
from keel.local.services import ProcessService, python_module
from keel.settings import KeelSettings


def worker(settings: KeelSettings, index: int) -> ProcessService:
    """Stream worker `index` (from 1), on KEEL_STREAMS_WEB_PORT + index - 1."""
    port = settings.streams_web_port + index - 1
    return ProcessService(
        f"streams-{index}",
        python_module("keel.streams", "worker", "--port", str(port)),
        settings,
        port=port,
        ops_url=f"http://127.0.0.1:{port}",
        env={"KEEL_STREAMS_WEB_PORT": str(port)},
        order=70,
        start_timeout=120.0,
        principal="keel-streams",
    )


def scaling(settings: KeelSettings) -> list[Scalable]:
    return [
        Scalable(
            "streams",
            settings.streams_app_id,
            (settings.streams_source_topic,),
            lambda index: worker(settings, index),
            default=settings.streams_workers,
        )
    ]
