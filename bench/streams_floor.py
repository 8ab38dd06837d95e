"""Faust's own floor for the streams benchmark: a Faust agent with the settings of a Keel
worker (`keel.streams.app.faust_settings`: same batching with `stream.take_events`, same broker
and commit settings) that only counts the messages of each batch. No decoding, no state.

Run by bench/streams.py: `python -m bench.streams_floor` with the KEEL_STREAMS_* settings.
It serves its count at /metrics like a Keel worker, so both are measured the same way.
"""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, Counter, generate_latest

from keel.settings import get_settings
from keel.streams.app import METRICS_CONTENT_TYPE, faust_settings, tune_gc


def main() -> None:
    from faust.worker import Worker

    settings = get_settings()
    datadir = (settings.streams_data_dir or settings.home / "streams") / settings.streams_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    from keel.kafka import make_admin

    partitions = len(
        make_admin(settings)
        .list_topics(settings.streams_source_topic, timeout=10)
        .topics[settings.streams_source_topic]
        .partitions
    )
    app = faust.App(settings.streams_app_id, **faust_settings(settings, partitions, datadir))
    registry = CollectorRegistry()
    events = Counter("keel_streams_events_total", "Messages counted", ["topic"], registry=registry)
    source = app.topic(
        settings.streams_source_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    counter = events.labels(settings.streams_source_topic)

    @app.agent(source, name="floor")
    async def count(stream: faust.StreamT) -> None:
        batches = cast(faust.Stream, stream).take_events(
            settings.streams_batch_size, within=settings.streams_batch_within_s
        )
        async for batch in batches:
            counter.inc(len(batch))

    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)

    app.page("/metrics")(Metrics)
    tune_gc()  # as a Keel worker does
    worker: Any = Worker(app, loglevel="warning", override_logging=False, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
