"""Prometheus metrics of a stream worker (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "keel_streams_events_total", "Events processed", ["topic"], registry=r
        )
        self.duplicates = Counter(
            "keel_streams_duplicates_total",
            "Events skipped as duplicates by event_id, and replayed dead letters applied before",
            registry=r,
        )
        self.poison = Counter(
            "keel_streams_dead_letters_total",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.jobs = Counter(
            "keel_streams_jobs_total", "Job events emitted", ["job_type"], registry=r
        )
        self.sink_errors = Counter(
            "keel_streams_sink_errors_total", "Failed sink calls", ["sink"], registry=r
        )
        self.batch_seconds = Histogram(
            "keel_streams_batch_seconds", "Time to process one batch", ["stage"], registry=r
        )
        self.stage_seconds = Counter(
            "keel_streams_stage_seconds",
            "Time spent per stage of batch processing (where the time goes)",
            ["stage"],
            registry=r,
        )
        self.runs_read = Counter(
            "keel_streams_runs_read_total",
            "Runs of source records Faust's fetcher skipped, read from the log and applied",
            registry=r,
        )
        self.ready = Gauge("keel_streams_ready", "1 when the worker serves queries", registry=r)
        self.stalled = Gauge(
            "keel_streams_stalled_partitions",
            "Assigned partitions with messages waiting and no progress (see /healthz)",
            registry=r,
        )
