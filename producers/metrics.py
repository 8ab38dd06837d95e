"""Prometheus metrics of the events API.

With several worker processes the parent sets PROMETHEUS_MULTIPROC_DIR before they start,
and /metrics aggregates every worker's figures (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ACCEPTED = Counter("keel_ingest_events_accepted_total", "Events acknowledged by Kafka.", ["type"])
REJECTED = Counter(
    "keel_ingest_events_rejected_total",
    "Events refused, by reason (invalid, unauthorized, rate_limited, backpressure, ...).",
    ["type", "reason"],
)
REQUESTS = Counter("keel_ingest_requests_total", "HTTP requests by status.", ["status"])
PRODUCE_LATENCY = Histogram(
    "keel_ingest_produce_seconds",
    "Time from handing a request's events to librdkafka to the broker's last ack.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge(
    "keel_ingest_in_flight_requests", "Requests being served.", multiprocess_mode="livesum"
)
QUEUED = Gauge(
    "keel_ingest_producer_queue",
    "Events waiting in the producer queue.",
    multiprocess_mode="livesum",
)


# The labelled children, looked up once: `labels()` costs about as much as `inc()`. Label
# values are bounded (statuses, catalog types or "unknown", reasons).
@lru_cache(maxsize=1024)
def requests_counter(status: int) -> Any:
    return REQUESTS.labels(str(status))


@lru_cache(maxsize=1024)
def accepted_counter(event_type: str) -> Any:
    return ACCEPTED.labels(event_type)


@lru_cache(maxsize=1024)
def rejected_counter(event_type: str, reason: str) -> Any:
    return REJECTED.labels(event_type, reason)


def exposition() -> tuple[bytes, str]:
    if os.environ.get(MULTIPROC_ENV):  # the prometheus-client convention, not a Keel setting
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
