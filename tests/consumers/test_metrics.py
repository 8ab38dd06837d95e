"""The batch-fed latency histogram renders as a Prometheus histogram."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from keel.consumers.metrics import JobMetrics


def test_latency_histogram_counts_and_sums() -> None:
    metrics = JobMetrics()
    metrics.latency.observe_many("email", [0.005, 0.02, 0.02, 7.0, 5000.0])
    metrics.latency.observe_many("email", [])
    metrics.done.labels("email").inc(5)
    [family] = [
        f
        for f in text_string_to_metric_families(metrics.render().decode())
        if f.name == "keel_jobs_latency_seconds"
    ]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("keel_jobs_latency_seconds_bucket", "0.01")] == 1
    assert samples[("keel_jobs_latency_seconds_bucket", "0.05")] == 3
    assert samples[("keel_jobs_latency_seconds_bucket", "10.0")] == 4
    assert samples[("keel_jobs_latency_seconds_bucket", "+Inf")] == 5
    assert samples[("keel_jobs_latency_seconds_count", None)] == 5
    assert abs(samples[("keel_jobs_latency_seconds_sum", None)] - 5007.045) < 1e-6
