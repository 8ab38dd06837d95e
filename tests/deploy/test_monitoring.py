"""Keel's Prometheus alert rules and Grafana dashboards, checked offline: promtool checks the
rules and runs their unit tests (each alert fires on a synthetic series and stays quiet on a
healthy one); every dashboard expression parses; both name only metrics Keel serves (here
against the metric names in Keel's code; tests/keel/test_stack.py checks them against the
running stack's /metrics)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from keel.lag_exporter import METRICS
from keel.local.system import ensure_command
from keel.metrics import ConsumerMetrics
from tests.deploy.monitoring import (
    GRAFANA,
    PROMETHEUS,
    ROOT,
    RULES,
    base_name,
    dashboard_exprs,
    dashboards_module,
    named_metrics,
    rule_exprs,
)

pytestmark = pytest.mark.unit


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = ensure_command("promtool", "prometheus")  # Debian's prometheus package
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def test_the_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    assert RULES, "no rule files"
    checked = promtool("check", "rules", *map(str, RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    ran = promtool("test", "rules", *map(str, tests))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Every alert has a unit test.
    alerts = {name.split(" / ")[1] for name in rule_exprs()} - {
        "keel:consumer_group_lag_threshold_seconds"
    }
    tested = set(re.findall(r"alertname: (\w+)", "".join(t.read_text() for t in tests)))
    assert alerts == tested


def test_the_compose_prometheus_config_is_valid() -> None:
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.compose.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboards_are_what_dashboards_py_makes(tmp_path: Path) -> None:
    made = dashboards_module().render()
    committed = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert made == committed, "run: python deploy/grafana/dashboards.py"
    for text in committed.values():
        board = json.loads(text)
        assert board["uid"].startswith("keel-") and board["panels"]
        assert all(p["datasource"]["uid"] == "prometheus" for p in board["panels"])


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    # promtool parses recording rules' expressions: one rule per panel target.
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": expr}
                    for i, expr in enumerate(exprs.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(json.dumps(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def keel_metric_names() -> set[str]:
    """Every metric family Keel's code declares (a name in quotes beside prometheus-client)."""
    names = {base_name(m) for m in METRICS}
    # the one consumer scheme, named by what keel.metrics really exports
    names |= {family.name for family in ConsumerMetrics("any").collect()}
    for package in ("producers", "streams", "consumers", "connectors", "schemas", "keel"):
        for source in (ROOT / package).rglob("*.py"):
            names |= {base_name(m) for m in re.findall(r'"(keel_[a-z0-9_]+)"', source.read_text())}
    return names


def test_rules_and_dashboards_name_only_metrics_keel_declares() -> None:
    named = named_metrics({**rule_exprs(), **dashboard_exprs()})
    unknown = {m: sorted(where) for m, where in named.items() if m not in keel_metric_names()}
    unknown.pop("up", None)  # Prometheus's own, per target
    assert not unknown, unknown
    # what the issue asks the overview to show
    overview = " ".join(e for k, e in dashboard_exprs().items() if k.startswith("keel-overview"))
    for metric in (
        "keel_ingest_events_accepted_total",
        "keel_ingest_produce_seconds_bucket",
        "keel_ingest_requests_total",
        "keel_consumer_group_lag_seconds",
        "keel_topic_partition_end_offset",
        "keel_outbox_oldest_pending_age_seconds",
    ):
        assert metric in overview
