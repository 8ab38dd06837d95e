"""The aiohttp application of the events API, and serving it on several processes.

`serve()` runs `workers` processes that each bind the same port with SO_REUSEPORT, so the
kernel spreads connections across them and every core takes requests; the parent only
supervises (restarts a worker that dies, stops them all on SIGTERM)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess

from aiohttp import web

from keel.logging import configure_logging
from keel.producers.auth import KeyStore, keys_file
from keel.producers.context import INGEST, Ingest
from keel.producers.kafka_out import EventProducer
from keel.producers.limits import RateLimiter
from keel.producers.metrics import MULTIPROC_ENV
from keel.producers.models import openapi
from keel.producers.pipeline import Pipeline
from keel.producers.routes import add_routes
from keel.schemas.catalog import load_catalog
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from keel.settings import KeelSettings, get_settings

log = logging.getLogger(__name__)


def build_app(settings: KeelSettings | None = None, *, share: int = 1) -> web.Application:
    """The application; nothing connects until it starts (aiohttp's on_startup)."""
    s = settings or get_settings()
    serde = AvroSerde(RegistryClient(s.schema_registry_url), load_catalog())
    ingest = Ingest(
        settings=s,
        producer=EventProducer(s),
        pipeline=Pipeline(serde, topic_prefix=s.ingest_topic_prefix),
        keys=KeyStore(keys_file(s)),
        limiter=RateLimiter(s.ingest_rate_limit, s.ingest_rate_burst, share=share),
        openapi=openapi(s.ingest_max_body_bytes, s.ingest_max_batch_events),
    )
    # aiohttp refuses bodies beyond client_max_size itself; one byte more than ours so that
    # our own check answers with Keel's JSON 413.
    app = web.Application(client_max_size=s.ingest_max_body_bytes + 1)
    app[INGEST] = ingest

    async def on_startup(_app: web.Application) -> None:
        await ingest.start()

    async def on_cleanup(_app: web.Application) -> None:
        await ingest.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    add_routes(app)
    return app


def _run_worker(host: str, port: int, share: int, reuse_port: bool) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = build_app(settings, share=share)
    web.run_app(
        app, host=host, port=port, reuse_port=reuse_port, print=None, access_log=None,
        handle_signals=True, shutdown_timeout=settings.ingest_delivery_timeout_s + 2,
    )  # fmt: skip


def worker_count(settings: KeelSettings, workers: int | None) -> int:
    n = settings.ingest_workers if workers is None else workers
    return n if n > 0 else (os.cpu_count() or 1)


def serve(host: str, port: int, workers: int) -> None:
    """Serve until SIGTERM/SIGINT: one process, or `workers` reuse-port processes."""
    if workers <= 1:
        _run_worker(host, port, 1, reuse_port=False)
        return
    # Every worker writes its metrics here; /metrics on any of them sums them all.
    metrics_dir = tempfile.mkdtemp(prefix="keel-ingest-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    stopping = False

    def spawn() -> BaseProcess:
        proc = ctx.Process(target=_run_worker, args=(host, port, workers, True), daemon=False)
        proc.start()
        return proc

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = [spawn() for _ in range(workers)]
    log.info("ingest on http://%s:%s with %s worker processes", host, port, workers)
    while not stopping:
        time.sleep(0.5)
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.error("ingest worker %s exited (%s); starting another", proc.pid, proc.exitcode)
                procs[i] = spawn()
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(timeout=get_settings().ingest_delivery_timeout_s + 10)
        if proc.is_alive():
            proc.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
