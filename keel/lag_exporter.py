"""The lag exporter (`keel lag --serve PORT`): every consumer group's lag on the cluster, in
messages and seconds per group and partition, for Prometheus, as Burrow and
kafka-lag-exporter do; and every topic's start and end offsets (dead-letter topic sizes,
events in per second).

A loop reads the brokers every interval and keeps the last snapshot; a scrape serves that
snapshot and never waits on Kafka. `/healthz`: the loop is alive; `/readyz`: its last read
succeeded recently. A group that is gone stops being exported on the next read."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keel import health
from keel.errors import KeelError, LocalStackError
from keel.kafka import SILENT_LOG, kafka_call, make_admin
from keel.lag import GroupLag, RecordTimes, UnknownGroup, group_lag, list_groups, offsets
from keel.logging import configure_logging
from keel.settings import KeelSettings
from keel.signals import stop_on_signals

log = logging.getLogger(__name__)

# Every metric the exporter serves: Prometheus rules and Grafana dashboards name only these.
METRICS = (
    "keel_consumer_group_lag_messages",
    "keel_consumer_group_lag_seconds",
    "keel_consumer_group_members",
    "keel_consumer_group_held_partitions",
    "keel_topic_partition_start_offset",
    "keel_topic_partition_end_offset",
    "keel_lag_exporter_last_read_timestamp_seconds",
    "keel_lag_exporter_read_duration_seconds",
    "keel_lag_exporter_read_errors_total",
)


@dataclass(frozen=True)
class Snapshot:
    groups: tuple[GroupLag, ...] = ()
    # (topic, partition) -> (start, end) offsets, for every topic but Kafka's own (`__*`)
    topics: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    read_at: float = 0.0  # wall clock of the read; 0: none yet
    duration: float = 0.0


def topic_offsets(admin: AdminClient, timeout: float) -> dict[tuple[str, int], tuple[int, int]]:
    """Start and end offsets (read_committed) of every partition of every non-internal topic."""
    with kafka_call("listing topics", timeout):
        metadata = admin.list_topics(timeout=timeout)
    keys = [
        (name, p)
        for name, topic in metadata.topics.items()
        if not name.startswith("__") and topic.error is None
        for p in topic.partitions
    ]
    starts = offsets(admin, keys, OffsetSpec.earliest(), timeout)
    ends = offsets(admin, keys, OffsetSpec.latest(), timeout)
    return {k: (starts[k], ends[k]) for k in keys if k in starts and k in ends}


class LagReader:
    """Reads a Snapshot of the cluster: the named groups, or every group there is."""

    def __init__(
        self, settings: KeelSettings, groups: list[str] | None = None, timeout: float = 10.0
    ) -> None:
        self.settings = settings
        self.groups = groups
        self.timeout = timeout
        self.admin = make_admin(settings, logger=SILENT_LOG)
        self.times = RecordTimes(settings, timeout)

    def read(self) -> Snapshot:
        began = time.monotonic()
        names = self.groups or list_groups(self.admin, self.timeout)
        reports = []
        for name in names:
            try:
                reports.append(group_lag(self.admin, name, self.timeout, self.times))
            except UnknownGroup:  # deleted between the listing and its description
                continue
        self.times.sweep()
        topics = topic_offsets(self.admin, self.timeout)
        return Snapshot(tuple(reports), topics, time.time(), time.monotonic() - began)

    def close(self) -> None:
        self.times.close()


class SnapshotCollector(Collector):
    """Serves the latest Snapshot as Prometheus metrics (a scrape never reads Kafka)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        by_partition = ["group", "topic", "partition"]
        messages = GaugeMetricFamily(
            "keel_consumer_group_lag_messages",
            "Records after the group's committed offset (log end minus committed).",
            labels=by_partition,
        )
        seconds = GaugeMetricFamily(
            "keel_consumer_group_lag_seconds",
            "Age of the group's next unconsumed record (0 when caught up).",
            labels=by_partition,
        )
        members = GaugeMetricFamily(
            "keel_consumer_group_members", "Members of the group.", labels=["group"]
        )
        held = GaugeMetricFamily(
            "keel_consumer_group_held_partitions",
            "Partitions of a Faust app's internal topics its members hold (never lag).",
            labels=["group", "role"],
        )
        for report in snap.groups:
            members.add_metric([report.group], report.members)
            for p in report.partitions:
                labels = [report.group, p.topic, str(p.partition)]
                messages.add_metric(labels, p.lag)
                if p.seconds is not None:
                    seconds.add_metric(labels, p.seconds)
            for role in sorted({h.role for h in report.held}):
                held.add_metric([report.group, role], sum(h.role == role for h in report.held))
        starts = GaugeMetricFamily(
            "keel_topic_partition_start_offset",
            "Oldest offset kept in the partition.",
            labels=["topic", "partition"],
        )
        ends = GaugeMetricFamily(
            "keel_topic_partition_end_offset",
            "Log-end offset of the partition (read_committed).",
            labels=["topic", "partition"],
        )
        for (topic, partition), (start, end) in sorted(snap.topics.items()):
            starts.add_metric([topic, str(partition)], start)
            ends.add_metric([topic, str(partition)], end)
        yield from (messages, seconds, members, held, starts, ends)
        yield GaugeMetricFamily(
            "keel_lag_exporter_last_read_timestamp_seconds",
            "When the exporter last read the cluster (Unix time; 0: never).",
            value=snap.read_at,
        )
        yield GaugeMetricFamily(
            "keel_lag_exporter_read_duration_seconds",
            "How long the last read of the cluster took.",
            value=snap.duration,
        )
        yield CounterMetricFamily(
            "keel_lag_exporter_read_errors",
            "Reads of the cluster that failed.",
            value=self.errors,
        )


def run_exporter(
    settings: KeelSettings,
    *,
    port: int,
    interval: float,
    groups: list[str] | None = None,
    timeout: float = 10.0,
) -> None:
    """Read the cluster every `interval` seconds and serve the figures until SIGTERM/SIGINT."""
    configure_logging()
    stop = stop_on_signals()
    collector = SnapshotCollector()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    beat = [time.monotonic()]
    # Alive while the loop turns (a read may take up to a timeout per group); ready while
    # the last good read is at most three intervals old.
    stale_after = 3 * interval + 2 * timeout

    def healthz() -> health.Checks:
        return {"loop": health.beating(beat[0], stale_after + 60)}

    def readyz() -> health.Checks:
        age = time.time() - collector.snapshot.read_at
        return {**healthz(), "kafka": health.check(age < stale_after, last_read_s=round(age, 1))}

    try:
        server = health.HealthServer(
            "lag exporter", port, healthz=healthz, readyz=readyz,
            metrics=lambda: health.metrics_text(registry),
        )  # fmt: skip
    except OSError as exc:
        raise LocalStackError(f"lag exporter port {port}: {exc.strerror}") from None
    server.start()
    reader = LagReader(settings, groups, timeout)
    log.info("lag exporter serving on port %s, reading every %ss", port, interval)
    try:
        while not stop.is_set():
            beat[0] = time.monotonic()
            try:
                collector.snapshot = reader.read()
            except KeelError as exc:
                collector.errors += 1
                log.warning("reading consumer lag failed: %s", exc)
            beat[0] = time.monotonic()
            stop.wait(interval)
    finally:
        reader.close()
        server.stop()
        log.info("lag exporter stopped")
