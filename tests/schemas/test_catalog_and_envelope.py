"""Pure logic: the catalog, the wire format and event validation (no network)."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest

from keel.schemas.catalog import CATALOG_DIR, load_catalog
from keel.schemas.envelope import ENVELOPE_FIELDS, Context, EventIn, validate_event
from keel.schemas.errors import DecodeError, InvalidSchema, UnknownEventType, ValidationFailed
from keel.schemas.wire import frame, unframe

STARTER = {"user.signed_up", "user.profile_updated", "page.viewed", "product.viewed",
           "cart.item_added", "order.placed", "report.requested", "track"}  # fmt: skip


def order(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "order.placed", "user_id": "u-1", "order_id": "o-1", "total": "19.98",
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "9.99"}],
    }  # fmt: skip
    event.update(overrides)
    return event


def test_starter_catalog_is_complete_and_routed() -> None:
    catalog = load_catalog()
    assert set(catalog.types()) >= STARTER
    for name in STARTER:
        et = catalog.get(name)
        assert et.topic == "events"
        assert et.subject == f"events-{et.record_name}"
    with pytest.raises(UnknownEventType):
        catalog.get("no.such")


def test_envelope_model_matches_every_event_schema() -> None:
    """The pydantic envelope and the .avsc files cannot drift apart."""
    model_fields = set(EventIn.model_fields)
    assert model_fields == {"event_id", "type", "user_id", "occurred_at", "context"}
    for path in (CATALOG_DIR / "events").glob("*.avsc"):
        schema = json.loads(path.read_text())
        names = [f["name"] for f in schema["fields"]]
        assert tuple(names[: len(ENVELOPE_FIELDS)]) == ENVELOPE_FIELDS, path.name
        types = {f["name"]: f["type"] for f in schema["fields"]}
        assert types["event_id"] == {"type": "string", "logicalType": "uuid"}
        assert types["occurred_at"]["logicalType"] == "timestamp-micros"
        assert set(model_fields) - {"type"} <= set(names)


# What each envelope field of the pydantic models must be in Avro (None: server-set).
ENVELOPE_AVRO = {
    "event_id": {"type": "string", "logicalType": "uuid"},
    "type": "string",
    "user_id": "string",
    "occurred_at": {"type": "long", "logicalType": "timestamp-micros"},
    "received_at": {"type": "long", "logicalType": "timestamp-micros"},
    "source": "string",
}


def _avro_of(annotation: object) -> object:
    """The Avro type a pydantic field annotation stands for (nullable as a union)."""
    args = set(getattr(annotation, "__args__", (annotation,)))
    nullable = type(None) in args
    base = next(iter(args - {type(None)}))
    avro = {str: "string", uuid.UUID: {"type": "string", "logicalType": "uuid"},
            datetime: {"type": "long", "logicalType": "timestamp-micros"}}.get(base, base)  # fmt: skip
    return ["null", avro] if nullable else avro


def test_envelope_fields_have_the_same_types_in_models_and_schemas() -> None:
    """Field by field: the pydantic envelope and the Context model against every event .avsc."""
    for path in sorted((CATALOG_DIR / "events").glob("*.avsc")):
        fields = {f["name"]: f for f in json.loads(path.read_text())["fields"]}
        for name, avro in ENVELOPE_AVRO.items():
            assert fields[name]["type"] == avro, (path.name, name)
        for name, info in EventIn.model_fields.items():
            if name in ("context", "type"):
                continue
            # The client may leave event_id and occurred_at out; the record always has them.
            expected = _avro_of(info.annotation)
            if isinstance(expected, list):
                expected = expected[1]
            assert fields[name]["type"] == expected, (path.name, name)
        context = fields["context"]
        assert context["type"][0] == "null" and context.get("default", "absent") is None
        record = context["type"][1]
        if isinstance(record, str):  # a later file names the record the first one defined
            assert record in ("Context", "keel.events.Context"), path.name
            continue
        assert (
            record["name"] == "Context" and record.get("namespace", "keel.events") == "keel.events"
        )
        avro_context = {f["name"]: f["type"] for f in record["fields"]}
        assert avro_context == {n: _avro_of(i.annotation) for n, i in Context.model_fields.items()}


def test_adding_an_event_type_is_adding_one_file(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    for path in (CATALOG_DIR / "events").glob("*.avsc"):
        (tmp_path / "events" / path.name).write_text(path.read_text())
    schema = json.loads((CATALOG_DIR / "events" / "page.viewed.avsc").read_text())
    schema["name"], schema["fields"] = (
        "Searched",
        [*schema["fields"][:7], {"name": "query", "type": "string"}],
    )
    (tmp_path / "events" / "search.performed.avsc").write_text(json.dumps(schema))
    catalog = load_catalog(tmp_path)
    et, record = validate_event(
        {"type": "search.performed", "user_id": "u", "query": "boots"}, source="t", catalog=catalog
    )
    assert et.record_name == "keel.events.Searched" and record["query"] == "boots"


def test_invalid_avsc_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.avsc").write_text(
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'
    )
    with pytest.raises(InvalidSchema, match=r"broken\.avsc"):
        load_catalog(tmp_path)


def test_valid_event_is_enriched() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    et, record = validate_event(order(), source="shop", context={"ip": "10.0.0.1"}, now=now)
    uuid.UUID(record["event_id"])
    assert record["received_at"] == now and record["occurred_at"] == now
    assert record["source"] == "shop" and record["context"]["ip"] == "10.0.0.1"
    assert record["total"] == Decimal("19.98") and record["currency"] == "USD"
    # The record encodes with the type's schema as it is.
    fastavro.schemaless_writer(io.BytesIO(), et.parsed, record)


def test_client_event_id_is_kept() -> None:
    event_id = str(uuid.uuid4())
    _et, record = validate_event(order(event_id=event_id), source="s")
    assert record["event_id"] == event_id


@pytest.mark.parametrize(
    ("overrides", "field", "error"),
    [
        ({"user_id": None}, "user_id", "required"),
        ({"user_id": ""}, "user_id", "must not be empty"),
        ({"order_id": 7}, "order_id", "must be a string"),
        ({"total": "1.234"}, "total", "at most 2 decimal places"),
        ({"total": "abc"}, "total", "must be a decimal number"),
        (
            {"items": [{"product_id": "p", "quantity": "2", "unit_price": "1"}]},
            "items.0.quantity",
            "must be an integer",
        ),
        ({"occurred_at": "yesterday"}, "occurred_at", "must be an ISO 8601 date-time"),
        (
            {"occurred_at": "2026-01-01T00:00:00"},
            "occurred_at",
            "must carry a time zone (e.g. Z or +00:00)",
        ),
        ({"event_id": "not-a-uuid"}, "event_id", "must be a UUID"),
        ({"surprise": 1}, "surprise", "unknown field"),
        (
            {"received_at": "2026-01-01T00:00:00Z"},
            "received_at",
            "set by the server; must not be sent",
        ),
        ({"type": "nope"}, "type", "unknown event type 'nope'"),
    ],
)
def test_bad_events_name_field_and_rule(
    overrides: dict[str, object], field: str, error: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_event(order(**overrides), source="s")
    assert {"field": field, "error": error} in info.value.errors


def test_track_properties_are_typed() -> None:
    _et, record = validate_event(
        {
            "type": "track",
            "user_id": "u",
            "name": "clicked",
            "properties": {"n": 1, "ok": True, "s": "x", "f": 1.5},
        },
        source="s",
    )
    assert record["properties"] == {"n": 1, "ok": True, "s": "x", "f": 1.5}
    with pytest.raises(ValidationFailed) as info:
        validate_event(
            {"type": "track", "user_id": "u", "name": "x", "properties": {"bad": [1]}}, source="s"
        )
    assert info.value.errors[0]["field"] == "properties.bad"


def test_wire_format_round_trip_and_errors() -> None:
    data = frame(42, b"\x02ab")
    assert data[:5] == b"\x00\x00\x00\x00\x2a"
    schema_id, payload = unframe(data)
    assert schema_id == 42 and bytes(payload) == b"\x02ab"
    with pytest.raises(DecodeError, match="too short"):
        unframe(b"\x00\x01")
    with pytest.raises(DecodeError, match="magic byte"):
        unframe(b"\x01\x00\x00\x00\x01x")
