"""Reports: a view becomes a table, then CSV and a real PNG in the report store."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keel.consumers.errors import PermanentJobError, RetriableJobError
from keel.consumers.reports import ReportStore, ViewsClient, build_table, flatten_numbers

PERIOD = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
VIEW = {
    "user_id": "u-1",
    "counts": {"page.viewed": 12, "order.placed": 2},
    "orders": 2,
    "lifetime_value": "42.50",
    "first_seen": "2026-01-02T10:00:00Z",
    "vip": True,
}


def test_flatten_keeps_numbers_only() -> None:
    assert flatten_numbers(VIEW) == [
        ("counts.page.viewed", 12.0),
        ("counts.order.placed", 2.0),
        ("orders", 2.0),
        ("lifetime_value", 42.5),
    ]


def test_view_without_figures_is_permanent() -> None:
    with pytest.raises(PermanentJobError, match="no figures"):
        build_table("activity", "u-1", {"name": "x"}, PERIOD)


def test_store_writes_csv_and_png_and_replaces_on_rebuild(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    table = build_table("activity", "u/1", VIEW, PERIOD)
    location = store.save("u/1", "r-1", table)
    assert location == tmp_path / "u%2F1" / "r-1"
    rows = list(csv.reader((location / "report.csv").open()))
    assert rows[0] == ["metric", "value"] and ["orders", "2"] in rows
    assert (location / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = store.save("u/1", "r-1", build_table("activity", "u/1", {"orders": 3}, PERIOD))
    assert again == location
    assert list(csv.reader((location / "report.csv").open()))[1] == ["orders", "3"]
    assert sorted(p.name for p in location.parent.iterdir()) == ["r-1"]  # no temp folders left


def test_views_client_unreachable_is_retriable() -> None:
    with pytest.raises(RetriableJobError, match="unreachable"):
        ViewsClient("http://127.0.0.1:1", timeout=2).get("user_activity", "u-1")
