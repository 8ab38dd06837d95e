"""The worker's app without a broker: readiness, query answers, topics it declares, the
local-stack services it plugs in."""

from __future__ import annotations

import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from faust.serializers import codecs

from keel.local.stack import stack_services
from keel.settings import KeelSettings
from keel.streams.app import StreamsApp, encode_key
from keel.streams.codec import AvroCodec
from keel.streams.discovery import discover
from keel.streams.processor import Sink
from keel.streams.processors.cache_fill import CacheFill
from keel.streams.processors.product_stats import ProductStats
from keel.streams.services import scaling


@pytest.fixture
def app(tmp_path: Path) -> StreamsApp:
    settings = KeelSettings(
        streams_app_id="unit", streams_data_dir=tmp_path, streams_dlq_topic="unit-dlq"
    )
    return StreamsApp(settings, discover(), AvroCodec(serde=None, catalog=None), partitions=3)


def test_internal_topics_are_declared_up_front(app: StreamsApp) -> None:
    specs = {s.name: s for s in app.internal_topics()}
    assert {
        "unit-user_activity-changelog",
        "unit-product_stats-changelog",
        "unit-active_users-changelog",
        "unit-active_users-users-changelog",
        "unit-job_triggers-changelog",
        "unit-dedup-changelog",
        "unit-product_stats-rekey",
        "unit-active_users-rekey",
        "unit-dlq",
    } <= set(specs)
    assert specs["unit-user_activity-changelog"].config["cleanup.policy"] == "compact"
    assert specs["unit-dedup-changelog"].config["cleanup.policy"] == "compact,delete"
    # Faust's leader topic too (one partition, as Faust makes it), so Faust creates nothing
    leader = specs.pop("unit-__assignor-__leader")
    assert leader.partitions == 1
    assert all(s.partitions == 3 for s in specs.values())
    # replication is left to keel.kafka.ensure_topics (the operator's or the cluster's)
    assert all(s.replication_factor == -1 for s in [leader, *specs.values()])


def test_not_ready_while_starting_rebalancing_or_recovering(app: StreamsApp) -> None:
    assert app.readiness() == (False, "starting")
    app._started = True
    faust_app: Any = app.app
    faust_app.rebalancing = True
    assert app.readiness() == (False, "rebalancing")
    faust_app.rebalancing = False
    faust_app.in_recovery = True
    assert app.readiness()[1] == "recovering tables from changelogs"
    faust_app.in_recovery = False
    app._indexing = True
    assert app.readiness()[0] is False
    app._indexing = False
    assert app.readiness() == (False, "waiting for the first assignment")
    faust_app.tables.recovery.completed.set()
    assert app.readiness() == (True, "ready")


def test_unknown_view_is_404_with_the_known_ones(app: StreamsApp) -> None:
    status, body = app.query("nope", "k", {})
    assert status == 404
    assert body["views"] == ["active_users", "product_stats", "user_activity"]


def test_table_keys_are_written_as_fausts_json_serializer_does() -> None:
    assert encode_key("user-1") == b'"user-1"'
    for key in ("user-1", "ünïcode-ß", 'quote"d', "emoji-🙂"):
        assert encode_key(key) == codecs.dumps("json", key)


def test_local_stack_runs_the_configured_workers(tmp_path: Path) -> None:
    found = [e for e in entry_points(group="keel.scaling") if e.name == "streams"]
    assert found and found[0].load() is scaling
    settings = KeelSettings(home=tmp_path, streams_workers=2, streams_web_port=9300)
    workers = [s for s in stack_services(settings) if s.name.startswith("streams-")]
    assert [w.name for w in workers] == ["streams-1", "streams-2"]
    assert [w.port for w in workers] == [9300, 9301]  # type: ignore[attr-defined]
    assert workers[0].argv[-4:] == ["keel.streams", "worker", "--port", "9300"]  # type: ignore[attr-defined]


class Audit(Sink):
    """A team's sink that reads a setting of its own and can be switched off."""

    name = "audit"
    views = ("user_activity",)

    def configure(self, settings: Any) -> None:
        self.prefix = settings.streams_cache_prefix

    def enabled(self, settings: Any) -> bool:
        return settings.streams_cache_prefix != "off:"


def test_the_worker_asks_each_processor_its_settings_and_whether_it_runs(tmp_path: Path) -> None:
    """No processor is named by the worker: each answers `configure` and, as a sink,
    `enabled` for itself (product_stats its retention, cache_fill KEEL_STREAMS_CACHE_ENABLED)."""
    codec = AvroCodec(serde=None, catalog=None)

    def build(**settings: Any) -> tuple[StreamsApp, ProductStats, Audit]:
        stats, audit = ProductStats(), Audit()
        base = KeelSettings(streams_app_id="unit", streams_data_dir=tmp_path)
        app = StreamsApp(
            base.model_copy(update=settings),
            [stats, CacheFill(), audit],
            codec,
            partitions=1,
            datadir=tmp_path / uuid.uuid4().hex,
        )
        return app, stats, audit

    app, stats, audit = build(streams_window_retention_h=5, streams_cache_prefix="t:")
    assert stats.retention == 5 and audit.prefix == "t:"
    assert [s.name for s in app.sinks] == ["cache_fill", "audit"]
    assert app.engine.render_views == {"user_activity", "product_stats"}

    app, stats, _audit = build(streams_cache_enabled=False, streams_cache_prefix="off:")
    assert stats.retention == 48 and app.sinks == []
    assert app.engine.render_views == frozenset()
    assert [p.name for p in app.processors] == ["product_stats", "cache_fill", "audit"]
