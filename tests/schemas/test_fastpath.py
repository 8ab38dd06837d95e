"""The compiled encoders against the reference path (validate_event + fastavro with the real
schema): over every catalog type, whatever an encoder accepts it encodes to exactly the
reference's bytes, it accepts plainly valid events, and it leaves every bad one to the
reference (which names the field and the rule). Pure: no network."""

from __future__ import annotations

import io
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.schemas.catalog import EventType, load_catalog
from keel.schemas.envelope import ENVELOPE_FIELDS, validate_event
from keel.schemas.errors import ValidationFailed
from keel.schemas.fastpath import compile_encoder

CATALOG = load_catalog()
EVENT_TYPES = [
    t for t in CATALOG.types() if set(ENVELOPE_FIELDS) <= set(CATALOG.get(t).field_names)
]
NOW = datetime(2026, 11, 28, 9, 30, 1, 123456, tzinfo=UTC)
NOW_US = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
SERVER_CONTEXT = {"ip": "10.0.0.1", "user_agent": "curl/8"}
SERVER_SET = {"received_at", "source"}

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def _moments(low: datetime, high: datetime) -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=low, max_value=high, timezones=st.just(UTC) | offsets)


def _timestamps(bad: bool) -> st.SearchStrategy[Any]:
    plain = _moments(datetime(1900, 1, 1), datetime(2200, 1, 1)).map(lambda d: d.isoformat())
    if not bad:
        return plain | plain.map(lambda s: s.replace("+00:00", "Z"))
    edges = _moments(datetime(1, 1, 1), datetime(9999, 12, 31))
    return (
        plain
        | edges
        | edges.map(lambda d: d.isoformat())
        | st.datetimes().map(lambda d: d.isoformat())  # no time zone: refused
        | st.sampled_from(["yesterday", "", "2026-11-28", "0001-01-01T00:00:00+01:00"])
    )


def _decimals(schema: dict[str, Any], bad: bool) -> st.SearchStrategy[Any]:
    scale, precision = schema.get("scale", 0), schema["precision"]
    bound = Decimal(10) ** (precision - scale) - 1
    exact = st.decimals(
        min_value=-bound, max_value=bound, places=scale, allow_nan=False, allow_infinity=False
    )
    plain = exact.map(str) | st.integers(
        -(10 ** (precision - scale)) + 1, 10 ** (precision - scale) - 1
    )
    if not bad:
        return plain | exact.map(lambda d: str(d).rstrip("0"))
    return (
        plain
        | exact
        | st.integers()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.decimals().map(str)  # exponents, too many places or digits, NaN
        | st.sampled_from(["1e30", "-0", "-0.00", ".5", "5.", "+1", " 1", "1_0", "١٢", "0.001"])
    )


def _uuids(bad: bool) -> st.SearchStrategy[Any]:
    u = st.uuids()
    if not bad:
        return u.map(str)
    return u.map(str) | u.map(lambda x: str(x).upper()) | u.map(lambda x: x.hex) | u | st.just("x")


def values(schema: Any, bad: bool) -> st.SearchStrategy[Any]:
    """Values for `schema`: in range and of the right JSON type, and with `bad` also junk."""
    good = _good(schema, bad)
    return good | junk if bad else good


def _good(schema: Any, bad: bool) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of([values(s, bad) for s in schema])
    if isinstance(schema, dict):
        kind, logical = schema["type"], schema.get("logicalType")
        if kind == "record":
            return records(schema, bad)
        if kind == "array":
            return st.lists(values(schema["items"], bad), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=6), values(schema["values"], bad), max_size=3)
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if logical == "uuid":
            return _uuids(bad)
        if logical == "timestamp-micros":
            return _timestamps(bad)
        if logical == "decimal":
            return _decimals(schema, bad)
        return values(kind, bad)
    return {
        "string": st.text(max_size=70),  # lengths past 63 need a two-byte varint
        "int": st.integers(-(2**31), 2**31 - 1) | (st.integers() if bad else st.nothing()),
        "long": st.integers(-(2**63), 2**63 - 1) | (st.integers() if bad else st.nothing()),
        "double": st.floats()
        | st.integers(-(10**18), 10**18)
        | (st.integers() if bad else st.nothing()),
        "float": st.floats(width=32) | st.integers(-1000, 1000),
        "boolean": st.booleans(),
        "null": st.none(),
        "bytes": st.text(max_size=10),
    }[schema]


def records(schema: dict[str, Any], bad: bool, top: bool = False) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in schema["fields"]:
            name = f["name"]
            if top and name in SERVER_SET and not (bad and draw(st.integers(0, 20)) == 0):
                continue
            optional = "default" in f or (isinstance(f["type"], list) and "null" in f["type"])
            if top and name in ("event_id", "occurred_at", "context"):
                optional = True
            if (optional or bad) and draw(st.booleans()):
                continue  # absent: the default, null, generated, or "required"
            out[name] = draw(values(f["type"], bad))
        if top:
            out["type"] = schema["keel_type"]
            if bad and draw(st.integers(0, 5)) == 0:
                out["user_id"] = draw(st.just("") | junk)
        if bad and draw(st.integers(0, 6)) == 0:
            out[draw(st.text(max_size=6))] = draw(junk)
        return out

    return build()


def events(et: EventType, bad: bool) -> st.SearchStrategy[dict[str, Any]]:
    return records({**et.schema, "keel_type": et.type}, bad, top=True)


def reference(et: EventType, event: Any, context: Any) -> bytes | None:
    """What the reference path writes for `event`, or None when it refuses it."""
    try:
        found, record = validate_event(event, source="shop", context=context, now=NOW)
    except ValidationFailed:
        return None
    assert found is et
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, et.parsed, record)
    except (ValueError, TypeError, OverflowError):  # the pipeline's "not encodable"
        return None
    return buffer.getvalue()


def compiled(et: EventType, event: Any, context: Any) -> tuple[bytes, bytes, str] | None:
    encoder = compile_encoder(et)
    assert encoder is not None
    out = bytearray(b"HEAD")
    done = encoder(out, event, "shop", context, NOW_US)
    if done is None:
        return None
    assert out[:4] == b"HEAD"
    return bytes(out[4:]), done[0], done[1]


def _check(et: EventType, event: dict[str, Any], context: Any) -> bool:
    fast = compiled(et, event, context)
    if fast is None:
        return False
    payload, key, event_id = fast
    # An event without event_id gets a random one: give the reference the same.
    same = event if event.get("event_id") is not None else {**event, "event_id": event_id}
    expected = reference(et, same, context)
    assert expected is not None, f"the encoder accepted what the reference refuses: {event!r}"
    assert payload == expected
    decoded = fastavro.schemaless_reader(io.BytesIO(payload), et.parsed, None)
    assert isinstance(decoded, dict)
    assert key == decoded["user_id"].encode() and event_id == str(decoded["event_id"])
    if event.get("event_id") is not None:
        assert event_id == str(uuid.UUID(str(event["event_id"])))
    return True


contexts = st.none() | st.just(SERVER_CONTEXT) | st.just({})


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), context=contexts)
def test_accepted_events_encode_to_the_reference_bytes(
    event_type: str, data: st.DataObject, context: Any
) -> None:
    et = CATALOG.get(event_type)
    event = data.draw(events(et, bad=True))
    _check(et, event, context)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), context=contexts)
def test_plain_valid_events_take_the_compiled_path(
    event_type: str, data: st.DataObject, context: Any
) -> None:
    """The common case must not quietly fall back: canonical JSON values are compiled."""
    et = CATALOG.get(event_type)
    event = data.draw(events(et, bad=False))
    if reference(et, event, context) is not None:
        assert _check(et, event, context), f"fell back for a valid event: {event!r}"


def order(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "order.placed",
        "user_id": "u-1",
        "order_id": "o-1",
        "total": "19.98",
        "event_id": "7a6a4c4e-7a8f-4d2f-9a55-3f5f0c1b2d3e",
        "occurred_at": "2026-11-28T08:00:00Z",
        "context": {"session_id": "s"},
        "items": [{"product_id": "p-1", "quantity": 2, "unit_price": "9.99"}],
    }
    event.update(overrides)
    return event


@pytest.mark.parametrize(
    "event",
    [
        order(),
        order(total=-5, items=[]),
        order(total="-0.00", currency="EUR", context=None),
        order(
            total="9999999999.99",
            items=[{"product_id": "p" * 80, "quantity": -(2**31), "unit_price": "0"}],
        ),
        order(total=Decimal("1.5"), occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
        order(event_id=uuid.UUID(int=5), total=1.25, occurred_at="1970-01-01T00:00:00-05:30"),
        {
            "type": "track",
            "user_id": "u",
            "name": "clicked",
            "properties": {
                "n": 1,
                "ok": True,
                "no": False,
                "s": "x",
                "f": 1.5,
                "z": None,
                "big": 2**63 - 1,
                "neg": -(2**63),
            },
        },
    ],
)
def test_known_good_events_match_the_reference(event: dict[str, Any]) -> None:
    et = CATALOG.get(event["type"])
    for context in (None, SERVER_CONTEXT):
        assert _check(et, event, context)


# Bad input the encoder must leave to the reference, with the error the reference gives.
BAD = [
    (order(user_id=None), "user_id", "required"),
    (order(user_id=""), "user_id", "must not be empty"),
    (order(user_id=7), "user_id", "must be a string"),
    (order(order_id=7), "order_id", "must be a string"),
    (order(total="1.234"), "total", "at most 2 decimal places"),
    (order(total="1.230"), "total", "at most 2 decimal places"),
    (order(total="abc"), "total", "must be a decimal number"),
    (order(total="1e30"), "total", "at most 12 digits"),
    (order(total=10**40), "total", "at most 12 digits"),
    (order(total="10000000000.00"), "total", "at most 12 digits"),
    (order(total="NaN"), "total", "must be a finite decimal number"),
    (order(total=True), "total", "must be a decimal number (string or number)"),
    (
        order(items=[{"product_id": "p", "quantity": "2", "unit_price": "1"}]),
        "items.0.quantity",
        "must be an integer",
    ),
    (
        order(items=[{"product_id": "p", "quantity": 2**31, "unit_price": "1"}]),
        "items.0.quantity",
        f"must be between {-(2**31)} and {2**31 - 1}",
    ),
    (
        order(items=[{"product_id": "p", "quantity": True, "unit_price": "1"}]),
        "items.0.quantity",
        "must be an integer",
    ),
    (order(items=[{"quantity": 1, "unit_price": "1"}]), "items.0.product_id", "required"),
    (
        order(items=[{"product_id": "p", "quantity": 1, "unit_price": "1", "x": 1}]),
        "items.0.x",
        "unknown field",
    ),
    (order(items={"a": 1}), "items", "must be an array"),
    (order(items=["x"]), "items.0", "must be an object"),
    (order(occurred_at="yesterday"), "occurred_at", "must be an ISO 8601 date-time"),
    (order(occurred_at=1700000000), "occurred_at", "must be an ISO 8601 date-time"),
    (
        order(occurred_at="2026-01-01T00:00:00"),
        "occurred_at",
        "must carry a time zone (e.g. Z or +00:00)",
    ),
    (order(occurred_at="0001-01-01T00:00:00+01:00"), "occurred_at", "out of range"),
    (order(event_id="not-a-uuid"), "event_id", "must be a UUID"),
    (order(event_id=5), "event_id", "must be a UUID"),
    (order(surprise=1), "surprise", "unknown field"),
    (
        order(received_at="2026-01-01T00:00:00Z"),
        "received_at",
        "set by the server; must not be sent",
    ),
    (order(source="me"), "source", "set by the server; must not be sent"),
    (order(context="x"), "context", "must be an object"),
    (order(context={"ip": 5}), "context.ip", "must be a string"),
    (order(context={"city": "x"}), "context.city", "unknown field"),
    (order(currency=None), None, None),  # null where a default exists: the default, valid
    (
        {"type": "track", "user_id": "u", "name": "x", "properties": {"bad": [1]}},
        "properties.bad",
        "must be one of: string, long, double, boolean",
    ),
    (
        {"type": "track", "user_id": "u", "name": "x", "properties": {"big": 10**400}},
        "properties.big",
        "must be one of: string, long, double, boolean",
    ),
]


@pytest.mark.parametrize(("event", "field", "error"), BAD)
def test_bad_events_are_left_to_the_reference(
    event: dict[str, Any], field: str, error: str
) -> None:
    et = CATALOG.get(event["type"])
    if field is None:
        assert _check(et, event, SERVER_CONTEXT)
        return
    assert compiled(et, event, SERVER_CONTEXT) is None
    with pytest.raises(ValidationFailed) as info:
        validate_event(event, source="shop", context=SERVER_CONTEXT, now=NOW)
    assert {"field": field, "error": error} in info.value.errors


def test_types_without_an_envelope_are_not_compiled() -> None:
    assert compile_encoder(CATALOG.get("job.email")) is None


def test_every_catalog_event_type_compiles() -> None:
    for name in EVENT_TYPES:
        assert compile_encoder(CATALOG.get(name)) is not None, name


def test_decimal_sizes_follow_fastavro() -> None:
    """Two's complement sized from the magnitude: 127 takes one byte, 128 and -128 two."""
    et = CATALOG.get("order.placed")
    for total in ["1.27", "1.28", "-1.28", "-1.29", "0", "327.67", "-327.68", "-0.01"]:
        assert _check(et, order(total=total, items=[]), None), total


def test_unicode_and_long_strings() -> None:
    et = CATALOG.get("order.placed")
    for text in ["é" * 40, "🙂", "x" * 300, string.printable]:
        assert _check(et, order(order_id=text), None)
    # A lone surrogate cannot be UTF-8: left to the reference, which refuses it.
    assert compiled(et, order(order_id="\ud800"), None) is None
