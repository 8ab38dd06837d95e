"""The pure parts of bench.outbox's Debezium comparison: the connector and worker settings,
the .properties text Connect reads, and the latency figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.commit_to_topic import Latency, latencies, percentile
from bench.debezium import Database, connector_config, properties, worker_config
from bench.outbox import key_values
from keel.connectors.outbox import OutboxTable


def test_the_router_maps_keels_outbox_columns_and_routes_to_one_topic() -> None:
    db = Database.of("postgresql://keel:s3cret@127.0.0.1:15432/keel")
    config = connector_config("keel-bench-dbz-1", db, OutboxTable.of("app.outbox"), "t-events")
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["table.include.list"] == "app.outbox"
    assert config["transforms.outbox.type"] == "io.debezium.transforms.outbox.EventRouter"
    # Keel's columns, as they are: the jsonb event is the value, the row id the key.
    assert config["transforms.outbox.table.field.event.payload"] == "event"
    assert config["transforms.outbox.table.field.event.key"] == "id"
    assert config["transforms.outbox.table.field.event.id"] == "id"
    assert config["transforms.outbox.route.topic.replacement"] == "t-events"
    # Streams from its slot (no snapshot of the rows already there), over pgoutput.
    assert config["snapshot.mode"] == "no_data"
    assert config["plugin.name"] == "pgoutput"
    # Slot and publication names PostgreSQL takes (no dashes), and the DSN's parts.
    assert config["slot.name"] == config["publication.name"] == "keel_bench_dbz_1"
    assert (config["database.port"], config["database.user"]) == ("15432", "keel")
    assert config["database.password"] == "s3cret"
    # Debezium's own batching defaults are left alone unless asked.
    assert not {"max.batch.size", "poll.interval.ms", "max.queue.size"} & set(config)


def test_a_table_without_schema_is_in_public_and_overrides_win() -> None:
    db = Database.of("postgresql://keel@localhost/db")
    config = connector_config("n", db, OutboxTable.of("keel_outbox"), "t", {"poll.interval.ms": 10})
    assert config["table.include.list"] == "public.keel_outbox"
    assert config["poll.interval.ms"] == "10"
    assert (db.host, db.port, db.dbname, db.password) == ("localhost", 5432, "db", "")


def test_database_of_decodes_the_dsn_and_refuses_another_scheme() -> None:
    db = Database.of("postgres://a%40b:p%3Aw@h:1/d")
    assert (db.user, db.password) == ("a@b", "p:w")
    with pytest.raises(ValueError, match="not a postgresql:// DSN"):
        Database.of("mysql://h/d")


def test_worker_config_points_connect_at_the_plugin_and_a_private_rest_port() -> None:
    config = worker_config("127.0.0.1:9", Path("/p"), Path("/w/offsets"), 1234)
    assert config["plugin.path"] == "/p"
    assert config["listeners"] == "http://127.0.0.1:1234"
    assert config["offset.storage.file.filename"] == "/w/offsets"


def test_properties_escape_what_java_would_read_otherwise() -> None:
    text = properties({"a=b:c": "x\\y", "k": " lead", "r": "(?s).*", "t": "${v}"})
    assert text.splitlines() == ["a\\=b\\:c=x\\\\y", "k=\\ lead", "r=(?s).*", "t=${v}"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latencies_match_rows_to_records_and_count_the_missing() -> None:
    committed = {"a": 1.0, "b": 2.0, "c": 3.0}
    seen = {"a": 1.25, "b": 2.5, "x": 9.0}  # "x" was not written by this trickle
    result = latencies(committed, seen)
    assert sorted(result.seconds) == [0.25, 0.5]
    assert result.missing == 1
    assert Latency([0.01, 0.02, 0.5], 0).summary() == {
        "p50_ms": 20.0, "p99_ms": 500.0, "max_ms": 500.0, "rows": 3, "missing": 0,
    }  # fmt: skip


def test_key_values_parse_and_refuse_a_bare_word() -> None:
    assert key_values(["a=1", "b.c=x=y"]) == {"a": "1", "b.c": "x=y"}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        key_values(["oops"])
