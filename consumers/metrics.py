"""Worker metrics (Prometheus); `keel.health` serves them with `/healthz` and `/readyz`.

Each worker owns a `CollectorRegistry`, so several workers in one process (tests) do not
share counters.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class BatchHistogram(Collector):
    """A Prometheus histogram fed a batch at a time: one lock per batch instead of two per
    observation (prometheus_client's Histogram), which matters at tens of thousands of jobs
    a second."""

    def __init__(self, name: str, doc: str, label: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.bounds = [float(b) for b in buckets]
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], list[float]]] = {}

    def observe_many(self, label_value: str, values: Sequence[float]) -> None:
        if not values:
            return
        bounds = self.bounds
        with self._lock:
            series = self._series.get(label_value)
            if series is None:
                series = self._series[label_value] = ([0] * (len(bounds) + 1), [0.0])
            counts, total = series
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
            total[0] += sum(values)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        with self._lock:
            snapshot = {k: (list(c), t[0]) for k, (c, t) in self._series.items()}
        for label_value, (counts, total) in sorted(snapshot.items()):
            cumulative, running = [], 0
            for bound, count in zip(
                [*map(floatToGoString, self.bounds), "+Inf"], counts, strict=True
            ):
                running += count
                cumulative.append((bound, running))
            family.add_metric([label_value], cumulative, total)
        yield family


class JobMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.done = Counter(
            "keel_jobs_done", "Jobs whose side effect is done.", ["job_type"], registry=r
        )
        self.failed = Counter(
            "keel_jobs_failed", "Job attempts that failed.", ["job_type", "retriable"], registry=r
        )
        self.retried = Counter(
            "keel_jobs_retried", "Jobs sent to the retry topic.", ["job_type"], registry=r
        )
        self.dead_lettered = Counter(
            "keel_jobs_dead_lettered",
            "Jobs sent to dead letters.",
            ["job_type", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "keel_jobs_duplicates",
            "Jobs skipped because their key was done.",
            ["job_type"],
            registry=r,
        )
        self.skipped = Counter(
            "keel_jobs_skipped",
            "Records on a shared topic that are not this job type.",
            ["job_type"],
            registry=r,
        )
        self.latency = BatchHistogram(
            "keel_jobs_latency_seconds",
            "From the trigger creating the job to its side effect done.",
            "job_type",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.in_flight = Gauge(
            "keel_jobs_in_flight", "Jobs read, not yet committed.", ["job_type"], registry=r
        )
        self.delayed = Gauge(
            "keel_jobs_delayed", "Retries read before due, waiting.", ["job_type"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
