"""Keel's Grafana dashboards, written as code: `python deploy/grafana/dashboards.py` writes
deploy/grafana/dashboards/*.json (committed; a test checks they are up to date, that every
PromQL expression parses with promtool and names only metrics Keel serves).

One overview and one dashboard per component. Panels read the Prometheus data source with
uid `prometheus` (deploy/grafana/provisioning/datasources/keel.yml)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, object]:
    laid: list[dict[str, object]] = []
    x = y = 0
    for number, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid.append(
            {
                "id": number,
                "type": panel.kind,
                "title": panel.title,
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for i, (expr, legend) in enumerate(panel.exprs)
                ],
            }
        )
        x += panel.width
    return {
        "uid": uid,
        "title": title,
        "tags": ["keel"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": laid,
    }


DLQ = 'topic=~".+\\\\.dlq(\\\\..+)?"'
LAG_SECONDS = Panel(
    "Consumer lag in seconds, per group",
    (("max by (group) (keel_consumer_group_lag_seconds)", "{{group}}"),),
    unit="s",
)
LAG_MESSAGES = Panel(
    "Consumer lag in messages, per group",
    (("sum by (group) (keel_consumer_group_lag_messages)", "{{group}}"),),
)
DLQ_SIZES = Panel(
    "Dead-letter topic sizes",
    (
        (
            f"sum by (topic) (keel_topic_partition_end_offset{{{DLQ}}}"
            f" - keel_topic_partition_start_offset{{{DLQ}}})",
            "{{topic}}",
        ),
    ),
)
OUTBOX_AGE = Panel(
    "Outbox: oldest pending row",
    (("max(keel_outbox_oldest_pending_age_seconds)", "oldest pending"),),
    unit="s",
)


def overview() -> dict[str, object]:
    return dashboard(
        "keel-overview",
        "Keel / Overview",
        [
            Panel(
                "Events in per second, by type",
                (("sum by (type) (rate(keel_ingest_events_accepted_total[5m]))", "{{type}}"),),
                unit="ops",
            ),
            Panel(
                "Ingest latency (broker ack), p50 / p99",
                (
                    (
                        "histogram_quantile(0.5, sum by (le) (rate(keel_ingest_produce_seconds_bucket[5m])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate(keel_ingest_produce_seconds_bucket[5m])))",
                        "p99",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Ingest error rates: 5xx and 503",
                (
                    (
                        'sum(rate(keel_ingest_requests_total{status=~"5..",status!="503"}[5m]))'
                        " / sum(rate(keel_ingest_requests_total[5m]))",
                        "5xx",
                    ),
                    (
                        'sum(rate(keel_ingest_requests_total{status="503"}[5m]))'
                        " / sum(rate(keel_ingest_requests_total[5m]))",
                        "503",
                    ),
                ),
                unit="percentunit",
            ),
            LAG_SECONDS,
            DLQ_SIZES,
            OUTBOX_AGE,
            Panel(
                "Keel processes up",
                (('sum by (job) (up{job=~"keel.*"})', "{{job}}"),),
                kind="stat",
                width=24,
            ),
        ],
    )


def ingest() -> dict[str, object]:
    return dashboard(
        "keel-ingest",
        "Keel / Ingest",
        [
            Panel(
                "Requests per second, by status",
                (("sum by (status) (rate(keel_ingest_requests_total[5m]))", "{{status}}"),),
                unit="reqps",
            ),
            Panel(
                "Events rejected per second, by reason",
                (
                    (
                        "sum by (reason) (rate(keel_ingest_events_rejected_total[5m]))",
                        "{{reason}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Broker ack latency, p99 by replica",
                (
                    (
                        "histogram_quantile(0.99, sum by (le, instance) (rate(keel_ingest_produce_seconds_bucket[5m])))",
                        "{{instance}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "In flight and queued",
                (
                    ("sum by (instance) (keel_ingest_in_flight_requests)", "requests {{instance}}"),
                    ("sum by (instance) (keel_ingest_producer_queue)", "queued {{instance}}"),
                ),
            ),
        ],
    )


def streams() -> dict[str, object]:
    return dashboard(
        "keel-streams",
        "Keel / Streams",
        [
            Panel(
                "Events processed per second, by topic",
                (("sum by (topic) (rate(keel_streams_events_total[5m]))", "{{topic}}"),),
                unit="ops",
            ),
            Panel(
                "Lag of the stream app's source topics (seconds)",
                (
                    (
                        'max by (group, topic) (keel_consumer_group_lag_seconds{group=~".*streams.*"})',
                        "{{group}} {{topic}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Batch time, p99 by stage",
                (
                    (
                        "histogram_quantile(0.99, sum by (le, stage) (rate(keel_streams_batch_seconds_bucket[5m])))",
                        "{{stage}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Duplicates, dead letters, jobs emitted per second",
                (
                    ("sum(rate(keel_streams_duplicates_total[5m]))", "duplicates"),
                    (
                        "sum by (reason) (rate(keel_streams_dead_letters_total[5m]))",
                        "dlq {{reason}}",
                    ),
                    ("sum by (job_type) (rate(keel_streams_jobs_total[5m]))", "jobs {{job_type}}"),
                ),
                unit="ops",
            ),
            Panel(
                "Workers ready, partitions stalled, changelog partitions held",
                (
                    ("sum(keel_streams_ready)", "ready workers"),
                    ("sum(keel_streams_stalled_partitions)", "stalled partitions"),
                    (
                        'sum by (role) (keel_consumer_group_held_partitions{group=~".*streams.*"})',
                        "held {{role}}",
                    ),
                ),
            ),
            Panel(
                "Sink errors per second",
                (("sum by (sink) (rate(keel_streams_sink_errors_total[5m]))", "{{sink}}"),),
                unit="ops",
            ),
        ],
    )


def jobs() -> dict[str, object]:
    return dashboard(
        "keel-jobs",
        "Keel / Jobs",
        [
            Panel(
                "Jobs done, retried, dead-lettered per second",
                (
                    ("sum by (job_type) (rate(keel_jobs_done_total[5m]))", "done {{job_type}}"),
                    (
                        "sum by (job_type) (rate(keel_jobs_retried_total[5m]))",
                        "retried {{job_type}}",
                    ),
                    (
                        "sum by (job_type) (rate(keel_jobs_dead_lettered_total[5m]))",
                        "dead {{job_type}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Lag of the job groups (seconds)",
                (
                    (
                        'max by (group) (keel_consumer_group_lag_seconds{group=~"keel\\\\.jobs\\\\..+"})',
                        "{{group}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Job latency, p99 by type",
                (
                    (
                        "histogram_quantile(0.99, sum by (le, job_type) (rate(keel_jobs_latency_seconds_bucket[5m])))",
                        "{{job_type}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "In flight and delayed",
                (
                    ("sum by (job_type) (keel_jobs_in_flight)", "in flight {{job_type}}"),
                    ("sum by (job_type) (keel_jobs_delayed)", "delayed {{job_type}}"),
                ),
            ),
            DLQ_SIZES,
        ],
    )


def connectors() -> dict[str, object]:
    return dashboard(
        "keel-connectors",
        "Keel / Connectors",
        [
            OUTBOX_AGE,
            Panel(
                "Outbox: rows published, rejected per second; pending",
                (
                    ("sum(rate(keel_outbox_published_total[5m]))", "published"),
                    ("sum(rate(keel_outbox_rejected_total[5m]))", "rejected"),
                    ("sum(keel_outbox_pending)", "pending"),
                ),
            ),
            Panel(
                "PostgreSQL sink: rows written, duplicates, dead letters per second",
                (
                    (
                        'sum(rate(keel_consumer_processed_total{component="pgsink"}[5m]))',
                        "written",
                    ),
                    (
                        'sum(rate(keel_consumer_skipped_total{component="pgsink",reason="duplicate"}[5m]))',
                        "duplicates",
                    ),
                    (
                        'sum(rate(keel_consumer_dead_lettered_total{component="pgsink"}[5m]))',
                        "dead letters",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Webhooks: delivered, dead-lettered per second, by subscriber",
                (
                    (
                        "sum by (subscriber) (rate(keel_webhooks_delivered_total[5m]))",
                        "delivered {{subscriber}}",
                    ),
                    (
                        "sum by (subscriber) (rate(keel_webhooks_dead_lettered_total[5m]))",
                        "dead {{subscriber}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Archive: records and bytes per second",
                (
                    (
                        'sum(rate(keel_consumer_processed_total{component="archive"}[5m]))',
                        "records",
                    ),
                    ("sum(rate(keel_archive_bytes_total[5m]))", "bytes"),
                ),
            ),
            Panel(
                "Lag of the sinks (seconds)",
                (
                    (
                        'max by (group) (keel_consumer_group_lag_seconds{group=~"keel-(pgsink|webhooks|archive)"})',
                        "{{group}}",
                    ),
                ),
                unit="s",
            ),
        ],
    )


def lag() -> dict[str, object]:
    return dashboard(
        "keel-lag",
        "Keel / Consumer lag and topics",
        [
            LAG_SECONDS,
            LAG_MESSAGES,
            Panel(
                "Lag in seconds, per partition",
                (
                    (
                        "max by (group, topic, partition) (keel_consumer_group_lag_seconds)",
                        "{{group}} {{topic}}[{{partition}}]",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Members per group",
                (("max by (group) (keel_consumer_group_members)", "{{group}}"),),
            ),
            Panel(
                "Records in per second, by topic",
                (("sum by (topic) (rate(keel_topic_partition_end_offset[5m]))", "{{topic}}"),),
                unit="ops",
            ),
            DLQ_SIZES,
            Panel(
                "Exporter: seconds since its last read of the cluster",
                (
                    (
                        "time() - max(keel_lag_exporter_last_read_timestamp_seconds)",
                        "since last read",
                    ),
                ),
                unit="s",
                kind="stat",
            ),
        ],
    )


DASHBOARDS = {
    "overview": overview,
    "ingest": ingest,
    "streams": streams,
    "jobs": jobs,
    "connectors": connectors,
    "lag": lag,
}


def render() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {
        f"keel-{name}.json": json.dumps(make(), indent=2) + "\n"
        for name, make in DASHBOARDS.items()
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        sys.stdout.write(f"{out / name}\n")
