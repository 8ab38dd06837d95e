"""Prometheus really running as `keel up` runs it (Debian's package, the config the stack
writes, Keel's rule files): the rules load, the lag exporter is an `up` target, and a lagging
group's alert is raised by Prometheus on the exporter's real figures."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from keel.local.monitoring import PrometheusService, lag_exporter
from keel.local.ports import free_port
from keel.settings import KeelSettings
from tests.keel.test_lag import _commit, _fill
from tests.polling import wait_for
from tests.processes import http_get


def test_prometheus_loads_the_rules_and_scrapes_the_lag_exporter(
    kafka_bootstrap: str, new_topic: Callable[..., str], group_id: str, tmp_path: Path
) -> None:
    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap,
        home=tmp_path,
        lag_exporter_port=free_port(),
        prometheus_port=free_port(),
    )
    topic = new_topic("prom", 1)
    _fill(kafka_bootstrap, topic, {0: 3}, written=time.time() - 900)  # 15 minutes old
    _commit(kafka_bootstrap, group_id, [TopicPartition(topic, 0, 1)])

    exporter = lag_exporter(settings, die_with_parent=True)
    prometheus = PrometheusService(
        settings,
        targets={"keel-lag-exporter": f"127.0.0.1:{settings.lag_exporter_port}"},
        die_with_parent=True,
    )
    try:
        exporter.start(print)
        prometheus.start(print)
        api = f"http://127.0.0.1:{settings.prometheus_port}/api/v1"

        groups = json.loads(http_get(f"{api}/rules")[1])["data"]["groups"]
        alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert "KeelConsumerGroupLagging" in alerts and "KeelServiceDown" in alerts

        def targets() -> list[dict[str, Any]]:
            return json.loads(http_get(f"{api}/targets")[1])["data"]["activeTargets"]

        wait_for(lambda: [t["health"] for t in targets()] == ["up"], 60, "the exporter up")

        # The lagging rule's expression, evaluated on what Prometheus scraped: our group is
        # 15 minutes behind, over the default threshold (the alert itself waits 5 minutes).
        [rule] = [
            r for g in groups for r in g["rules"] if r.get("name") == "KeelConsumerGroupLagging"
        ]

        def lagging() -> list[Any]:
            query = urllib.parse.quote(rule["query"])
            found = json.loads(http_get(f"{api}/query?query={query}")[1])["data"]["result"]
            return [r for r in found if r["metric"].get("group") == group_id]

        [row] = wait_for(lagging, 60, f"{group_id} over its threshold", interval=1)
        assert 900 <= float(row["value"][1]) < 1000

        # Prometheus's own rule evaluation holds the alert for our group: pending, as it
        # fires after its 5 minutes (promtool's unit tests show it firing).
        def alert() -> list[Any]:
            found = json.loads(http_get(f"{api}/alerts")[1])["data"]["alerts"]
            return [
                a
                for a in found
                if a["labels"].get("alertname") == "KeelConsumerGroupLagging"
                and a["labels"].get("group") == group_id
            ]

        [held] = wait_for(alert, 60, "the lagging alert pending", interval=1)
        assert held["state"] in {"pending", "firing"}
    finally:
        prometheus.stop(print)
        exporter.stop(print)
