"""The compiled decoders against fastavro's reader: over every catalog type and a schema
holding every Avro construct, a compiled decoder returns exactly what fastavro returns for
the same bytes and writer schema (as `AvroSerde.decode_plain` reads them: `uuid` and
`timestamp-micros` stripped), and it refuses truncated or corrupt bytes. Pure: no network."""

from __future__ import annotations

import io
import math
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.schemas.catalog import load_catalog
from keel.schemas.fastread import compile_decoder
from keel.schemas.serde import strip_logical_types

CATALOG = load_catalog()

EVERYTHING: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "keel.test",
    "fields": [
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "nothing", "type": "null"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {
            "name": "price",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        },
        {
            "name": "fixed_price",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 8,
                "logicalType": "decimal",
                "precision": 12,
                "scale": 3,
            },
        },
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "millis", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "scores", "type": {"type": "map", "values": ["null", "long", "string"]}},
        {
            "name": "items",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Item",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "color", "type": ["null", "Color"]},
                    ],
                },
            },
        },
        {"name": "best", "type": ["null", "keel.test.Item"]},
        {"name": "nested", "type": {"type": "map", "values": {"type": "array", "items": "Hash"}}},
    ],
}


def avro_values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values fastavro can write for `schema` (logical types as their Python types)."""
    if isinstance(schema, list):
        return st.one_of([avro_values(s, named) for s in schema])
    if isinstance(schema, str):
        simple = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(width=32, allow_nan=False),
            "double": st.floats(allow_nan=False),
            "bytes": st.binary(max_size=300),
            "string": st.text(max_size=80),
        }
        if schema in simple:
            return simple[schema]
        return avro_values(named[schema if schema in named else f"keel.test.{schema}"], named)
    kind, logical = schema["type"], schema.get("logicalType")
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        named[name if "." in name else f"{schema.get('namespace', 'keel.test')}.{name}"] = schema
        named.setdefault(name, schema)
    if logical == "uuid":
        return st.uuids().map(str)
    if logical in ("timestamp-micros", "timestamp-millis"):
        return st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    if logical == "decimal":
        scale, precision = schema.get("scale", 0), schema["precision"]
        bound = Decimal(10) ** (precision - scale) - 1
        return st.decimals(-bound, bound, places=scale, allow_nan=False, allow_infinity=False)
    if logical == "date":
        return st.dates(date(1900, 1, 1), date(2200, 1, 1))
    if logical == "time-millis":
        return st.times().map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: avro_values(f["type"], named) for f in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(avro_values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=6), avro_values(schema["values"], named), max_size=3
        )
    return avro_values(kind, named)


def encode(schema: dict[str, Any], record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def by_fastavro(plain_schema: dict[str, Any], data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(plain_schema), None)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself (a float32 round trip can make one)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


SCHEMAS = {t: CATALOG.get(t).schema for t in CATALOG.types()} | {"everything": EVERYTHING}


@pytest.mark.parametrize("logical", ["plain", "full"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_decoders_read_what_fastavro_reads(
    name: str, logical: str, data: st.DataObject
) -> None:
    """plain: as `decode_plain` reads (uuid and timestamp-micros as written); full: as
    `decode` reads (every logical type as fastavro makes it: UUID, datetime, ...)."""
    schema = SCHEMAS[name]
    read_as = strip_logical_types(schema) if logical == "plain" else schema
    decoder = compile_decoder(read_as)
    assert decoder is not None, f"{name} did not compile"
    record = data.draw(avro_values(schema, {}))
    payload = b"\x00\x00\x00\x00\x07" + encode(schema, record)  # read after a 5-byte header
    expected = by_fastavro(read_as, payload[5:])
    assert same(decoder(payload, 5), expected)


def test_plain_values_and_every_construct() -> None:
    record = {
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "at": datetime(2026, 11, 28, 9, 30, 1, 123456, tzinfo=UTC),
        "flag": True,
        "small": -3,
        "big": 2**62,
        "ratio": 0.5,
        "amount": -1.25,
        "blob": b"\x00\xff",
        "text": "ünïcode ✓" * 20,  # a length of several varint bytes
        "nothing": None,
        "color": "GREEN",
        "hash": b"abcd",
        "price": Decimal("-12.50"),
        "fixed_price": Decimal("123456789.123"),
        "day": date(2026, 11, 28),
        "clock": time(9, 30, 1, 5000),
        "millis": datetime(2026, 11, 28, 9, 30, 1, 5000, tzinfo=UTC),
        "tags": ["a", "b"],
        "scores": {"x": 1, "y": None, "z": "z"},
        "items": [{"sku": "s1", "color": "RED"}, {"sku": "s2", "color": None}],
        "best": {"sku": "s3", "color": None},
        "nested": {"k": [b"wxyz"]},
    }
    decoder = compile_decoder(strip_logical_types(EVERYTHING))
    assert decoder is not None
    got = decoder(encode(EVERYTHING, record), 0)
    assert got["id"] == record["id"]  # uuid and timestamp-micros stay as written
    assert got["at"] == 1795858201123456
    assert got["price"] == Decimal("-12.50") and got["day"] == date(2026, 11, 28)
    assert got["millis"] == record["millis"] and got["clock"] == record["clock"]
    assert got["items"] == record["items"] and got["best"] == record["best"]
    assert {k: v for k, v in got.items() if k not in ("id", "at")} == {
        k: v for k, v in record.items() if k not in ("id", "at")
    }


def test_blocks_with_a_byte_size_are_read() -> None:
    """Writers may give a block a negative count followed by its size in bytes."""
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}],
    }
    data = bytes([3, 4, 2, 4, 0])  # count -2, 4 bytes: 1, 2; then the end block
    decoder = compile_decoder(schema)
    assert decoder is not None
    assert decoder(data, 0) == by_fastavro(schema, data) == {"a": [1, 2]}


def test_truncated_bytes_raise() -> None:
    schema = strip_logical_types(CATALOG.get("order.placed").schema)
    decoder = compile_decoder(schema)
    assert decoder is not None
    record = {
        "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "type": "order.placed",
        "user_id": "u-1",
        "occurred_at": 1,
        "received_at": 2,
        "source": "web",
        "context": None,
    }
    for field in schema["fields"][7:]:  # the order's own fields: their first branch/values
        record[field["name"]] = _first_value(field["type"])
    whole = encode(schema, record)
    assert decoder(whole, 0)["user_id"] == "u-1"
    for cut in range(len(whole)):
        with pytest.raises((IndexError, EOFError, ValueError, UnicodeDecodeError)):
            decoder(whole[:cut], 0)


def _first_value(schema: Any) -> Any:
    if isinstance(schema, list):
        return _first_value(next(s for s in schema if s != "null"))
    if isinstance(schema, dict):
        kind = schema["type"]
        if schema.get("logicalType") == "decimal":
            return Decimal("1.00")
        if kind == "array":
            return [_first_value(schema["items"])]
        if kind == "map":
            return {"k": _first_value(schema["values"])}
        if kind == "enum":
            return schema["symbols"][0]
        if kind == "record":
            return {f["name"]: _first_value(f["type"]) for f in schema["fields"]}
        return _first_value(kind)
    return {"string": "x", "long": 7, "int": 7, "double": 1.5, "boolean": True, "bytes": b"x"}[
        schema
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([3]), "union branch"),  # branch -2
        (bytes([6]), "union branch"),  # branch 3 of 2
        (bytes([2, 3]), "negative length"),  # the string's length -2
        (bytes([2]) + b"\xff" * 11, "longer than 10 bytes"),
    ],
)
def test_corrupt_bytes_raise_a_named_error(data: bytes, error: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": ["null", "string"]}]}
    decoder = compile_decoder(schema)
    assert decoder is not None
    with pytest.raises(ValueError, match=error):
        decoder(data, 0)


def test_recursive_and_non_record_schemas_are_left_to_fastavro() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    assert compile_decoder(node) is None
    assert compile_decoder({"type": "array", "items": "long"}) is None
    assert (
        compile_decoder({"type": "record", "name": "R", "fields": [{"name": "x", "type": "Nope"}]})
        is None
    )
