"""The PostgreSQL sink's pure parts: an event's row, its JSON, the type filter."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from keel.connectors.pgsink import (
    PgSinkError,
    Unwritable,
    event_json,
    event_row,
    parse_topics,
    parse_types,
    wanted,
)

EVENT_ID = "6F1C1B2E-3C4D-4E5F-8A9B-0C1D2E3F4A5B"
OCCURRED = 1_795_865_400_123_456  # 2026-11-28T11:30:00.123456Z


def decoded(**over: Any) -> dict[str, Any]:
    """An event as AvroSerde.decode_plain returns it."""
    return {
        "event_id": EVENT_ID,
        "type": "order.placed",
        "user_id": "u-1",
        "occurred_at": OCCURRED,
        "received_at": OCCURRED + 5,
        "source": "api",
        "context": None,
        "total": Decimal("1234.50"),
        "items": [{"sku": "a", "price": Decimal("0.10")}],
        **over,
    }


def test_row_takes_the_envelope_and_where_it_was_read() -> None:
    row = event_row(decoded(), "events", 2, 41)
    assert row.event_id == EVENT_ID.lower()  # normalized, as PostgreSQL prints a uuid
    assert (row.type, row.user_id, row.source) == ("order.placed", "u-1", "api")
    assert (row.occurred_at_us, row.received_at_us) == (OCCURRED, OCCURRED + 5)
    assert (row.topic, row.partition, row.offset) == ("events", 2, 41)


def test_the_jsonb_keeps_every_field_with_decimals_as_exact_strings() -> None:
    body = json.loads(event_row(decoded(), "events", 0, 0).event)
    assert body["total"] == "1234.50" and body["items"][0]["price"] == "0.10"
    assert body["occurred_at"] == OCCURRED and body["context"] is None
    assert body["event_id"] == EVENT_ID


def test_bytes_are_base64_and_uuid_objects_strings() -> None:
    body = json.loads(event_json({"blob": b"\x00\xff", "id": uuid.UUID(int=1)}))
    assert body == {"blob": "AP8=", "id": "00000000-0000-0000-0000-000000000001"}


def test_what_jsonb_refuses_is_replaced_not_fatal() -> None:
    text = event_json({"s": "a\x00b", "m": {"x": float("nan"), "y": float("inf"), "z": 1.5}})
    assert "\\u0000" not in text
    assert json.loads(text) == {"s": "a\ufffdb", "m": {"x": "nan", "y": "inf", "z": 1.5}}
    row = event_row(decoded(user_id="u\x00"), "t", 0, 0)
    assert row.user_id == "u\ufffd"


def test_a_real_null_stays_null() -> None:
    assert json.loads(event_json({"a": None, "b": 1.0})) == {"a": None, "b": 1.0}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"event_id": "not-a-uuid"}, "field 'event_id': 'not-a-uuid' is not a UUID"),
        ({"event_id": None}, "field 'event_id'"),
        ({"user_id": 7}, "field 'user_id': expected a string, got int"),
        ({"type": None}, "field 'type': expected a string"),
        ({"occurred_at": "2026-11-28"}, "field 'occurred_at': expected timestamp-micros"),
        ({"received_at": 2**62}, "field 'received_at': .* outside years 1..9999"),
        ({"occurred_at": True}, "field 'occurred_at': expected timestamp-micros"),
    ],
)
def test_an_event_postgresql_would_refuse_is_unwritable_naming_the_field(
    over: dict[str, Any], message: str
) -> None:
    with pytest.raises(Unwritable, match=message):
        event_row(decoded(**over), "events", 0, 0)


def test_missing_envelope_field_is_unwritable() -> None:
    event = decoded()
    del event["source"]
    with pytest.raises(Unwritable, match="field 'source'"):
        event_row(event, "events", 0, 0)


def test_a_row_is_the_tuple_copy_writes_in_load_table_order() -> None:
    row = event_row(decoded(), "events", 3, 9)
    assert tuple(row)[:6] == (
        EVENT_ID.lower(),
        "order.placed",
        "u-1",
        OCCURRED,
        OCCURRED + 5,
        "api",
    )
    assert tuple(row)[6:9] == ("events", 3, 9) and json.loads(tuple(row)[9])["user_id"] == "u-1"


def test_type_patterns_are_checked_against_the_catalog() -> None:
    assert parse_types("") == []
    assert parse_types(" cart.* , page.viewed ") == ["cart.*", "page.viewed"]
    with pytest.raises(PgSinkError, match=r"KEEL_PGSINK_TYPES: 'pages\.viewed' matches no"):
        parse_types("pages.viewed")


def test_wanted_keeps_everything_without_patterns() -> None:
    assert wanted([], "anything")
    assert wanted(["cart.*"], "cart.item_added")
    assert not wanted(["cart.*"], "page.viewed")


def test_topics_must_name_one() -> None:
    assert parse_topics("events, other") == ["events", "other"]
    with pytest.raises(PgSinkError, match="KEEL_PGSINK_TOPICS names no topic"):
        parse_topics(" , ")


def test_nan_is_kept_for_types_whose_schema_has_doubles_and_unknown_types() -> None:
    from keel.connectors.pgsink.rows import _may_hold_floats

    assert _may_hold_floats("track") and _may_hold_floats("not.in.catalog")
    assert not _may_hold_floats("page.viewed")
    body = json.loads(event_json({"type": "track", "properties": {"x": float("nan")}}))
    assert body["properties"] == {"x": "nan"}
