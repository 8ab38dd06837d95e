"""One naming scheme for the metrics of every Kafka consumer of Keel:
`keel_consumer_*{component="..."}`, where `component` names the consumer (`pgsink`,
`archive`, `webhooks`, ...).

The figures are plain integers the consumer's own loop bumps (one writer, no lock on the
hot path) and exports through a Prometheus collector; its progress log reads the same
figures (`counts()`), so the log and the dashboard never disagree. What only one consumer
knows (a batch's duration, a subscriber's latency) keeps its own `keel_<component>_*` name
beside these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "keel_consumer_"


class ConsumerMetrics(Collector):
    """The figures of one consumer; register it once (`registry`), bump the fields."""

    def __init__(self, component: str, registry: CollectorRegistry | None = None) -> None:
        self.component = component
        self.consumed = 0  # records read
        self.processed = 0  # records whose effect is done (written, filed, delivered, run)
        self.failures = 0  # attempts that failed and are retried
        self.commits = 0  # offset commits that succeeded
        self.rebalances = 0  # assignments and revocations
        self.skipped: Counter[str] = Counter()  # by reason: duplicate, filtered, ...
        self.dead_lettered: Counter[str] = Counter()  # by reason
        self.in_flight = 0  # read, not committed yet
        self.assigned = 0  # partitions assigned
        self.paused = False  # backpressure: fetching stopped
        if registry is not None:
            registry.register(self)

    def counts(self) -> dict[str, Any]:
        """The figures as the progress log writes them."""
        return {
            "consumed": self.consumed,
            "processed": self.processed,
            "skipped": dict(self.skipped),
            "dead_lettered": sum(self.dead_lettered.values()),
            "failures": self.failures,
            "in_flight": self.in_flight,
            "assigned": self.assigned,
            "paused": self.paused,
        }

    def collect(self) -> Iterator[Metric]:
        c = [self.component]

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, doc, labels=["component"])
            family.add_metric(c, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(PREFIX + name, doc, labels=["component"])
            family.add_metric(c, value)
            return family

        def by_reason(name: str, doc: str, values: Counter[str]) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, doc, labels=["component", "reason"])
            for reason, value in sorted(values.items()):
                family.add_metric([*c, reason], value)
            return family

        yield counter("consumed", "Records read.", self.consumed)
        yield counter(
            "processed", "Records whose effect is done (written, filed, delivered, run).",
            self.processed,
        )  # fmt: skip
        yield by_reason("skipped", "Records read and deliberately not applied.", self.skipped)
        yield by_reason(
            "dead_lettered", "Records written to a dead-letter topic.", self.dead_lettered
        )
        yield counter("failures", "Attempts that failed and are retried.", self.failures)
        yield counter("commits", "Offset commits that succeeded.", self.commits)
        yield counter("rebalances", "Partition assignments and revocations.", self.rebalances)
        yield gauge("in_flight", "Records read and not committed yet.", self.in_flight)
        yield gauge("assigned_partitions", "Partitions assigned.", self.assigned)
        yield gauge("paused", "1 while fetching is paused for backpressure.", int(self.paused))


def total(metric: Any) -> float:
    """What a prometheus_client counter exports, summed over its labels: a progress log
    reads the exported figure rather than keeping a second tally of its own."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
