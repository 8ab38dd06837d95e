"""The state one worker process serves requests with: producer, pipeline, keys, limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from keel.producers.auth import KeyStore
from keel.producers.kafka_out import EventProducer
from keel.producers.limits import RateLimiter
from keel.producers.pipeline import Pipeline
from keel.schemas.catalog import DEFAULT_TOPIC
from keel.schemas.errors import SchemaError
from keel.settings import KeelSettings

log = logging.getLogger(__name__)
READY_CACHE_S = 1.0


@dataclass
class Ingest:
    settings: KeelSettings
    producer: EventProducer
    pipeline: Pipeline
    keys: KeyStore
    limiter: RateLimiter
    openapi: dict[str, Any]
    warmed: bool = False
    registry_problem: str | None = None
    _ready: tuple[float, dict[str, bool]] = field(default=(0.0, {}))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        self.producer.start()
        self.keys.refresh()
        self._tasks = [
            asyncio.create_task(self._warm_up()),
            asyncio.create_task(self._reload_keys()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = await asyncio.get_running_loop().run_in_executor(None, self.producer.close, 10.0)
        if left:
            log.error("%s events still queued at shutdown (their requests got no 2xx)", left)

    async def _warm_up(self) -> None:
        """Register every schema before taking traffic; retried until the registry answers."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        while not self.warmed:
            try:
                await loop.run_in_executor(None, self.pipeline.warm_up)
                self.warmed = True
                log.info(
                    "schemas registered for %s event types", len(self.pipeline.catalog.types())
                )
            except SchemaError as exc:
                log.warning("registry not ready (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.keys.refresh()
            except Exception:
                log.exception("could not reload API keys from %s", self.keys.path)

    async def readiness(self) -> dict[str, bool]:
        stamp, checks = self._ready
        if time.monotonic() - stamp < READY_CACHE_S:
            return checks
        loop = asyncio.get_running_loop()
        # The user-action topic, which every replica must be allowed to write (job event
        # types of the catalog go elsewhere, and a principal may rightly not write them).
        topics = [self.pipeline.topic_prefix + DEFAULT_TOPIC]
        broker = not self.producer.broker_down and await loop.run_in_executor(
            None, self.producer.broker_reachable, 2.0, topics
        )
        registry = await loop.run_in_executor(None, self._registry_reachable)
        checks = {"broker": broker, "registry": registry, "schemas": self.warmed}
        self._ready = (time.monotonic(), checks)
        return checks

    def _registry_reachable(self) -> bool:
        try:
            self.pipeline.serde.registry.subjects()
        except SchemaError as exc:
            # /readyz names a refusal (wrong credentials): waiting will not mend it
            self.registry_problem = str(exc) if getattr(exc, "status", 0) in (401, 403) else None
            return False
        self.registry_problem = None
        return True


INGEST = web.AppKey("ingest", Ingest)


def ingest_of(app: web.Application) -> Ingest:
    return app[INGEST]
