"""Compiled per-type encoders: a client's JSON event straight to Avro bytes, in one pass.

`validate_event` interprets the schema dict for every event and builds a record of Python
values (`Decimal`, `datetime`) that fastavro then converts again field by field; together
that is most of the ingestion's CPU time. `compile_encoder` turns one event type's schema,
once, into generated Python source (like fastjsonschema does for JSON Schema) that checks
each value with the same rules and appends its Avro binary encoding to a buffer: a decimal
becomes its unscaled two's-complement bytes, a timestamp its microseconds, with no
intermediate record and no per-field schema lookups.

The compiled encoder is an accelerator only: it returns None for anything that is not
plainly valid (a wrong type, a missing field, an unusual construct it does not handle, any
exception), and the caller then takes the reference path, `validate_event` plus fastavro,
which reports every error with its field path and rule. So errors have one source of truth,
and a test checks over every catalog type that whatever the encoder accepts it encodes to
exactly the reference's bytes."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from struct import Struct
from typing import Any

import fastavro

from keel.schemas.catalog import EventType
from keel.schemas.codegen import Source, Unsupported

# (payload buffer, event, source, server context, now in µs since the epoch) ->
# (key, event_id) with the Avro binary appended to the buffer, or None: take the
# reference path.
Encoder = Callable[[bytearray, Any, str, Mapping[str, Any] | None, int], tuple[bytes, str] | None]

_ENVELOPE = ("event_id", "type", "user_id", "occurred_at", "received_at", "source", "context")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Inside these bounds converting to UTC cannot overflow (the reference refuses years 1 and
# 9999 near their edges; the encoder leaves those to it).
_SAFE_MIN_US = (datetime(1, 1, 3, tzinfo=UTC) - _EPOCH) // _EPOCH.resolution
_SAFE_MAX_US = (datetime(9999, 12, 29, tzinfo=UTC) - _EPOCH) // _EPOCH.resolution
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DECIMAL = re.compile(r"(-?[0-9]+)(?:\.([0-9]+))?")
_BYTE = [bytes((i,)) for i in range(256)]
_DOUBLE = Struct("<d").pack
_FLOAT = Struct("<f").pack
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})


def _varint(n: int) -> bytes:
    """Avro's zigzag varint of a long (the caller has checked the range)."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of the small non-negative longs (string lengths, counts, quantities), ready-made.
_SMALL_MAX = 4096
_SMALL = [_varint(i) for i in range(_SMALL_MAX)]


def _decimal_bytes(unscaled: int) -> bytes:
    # fastavro's sizing: from the magnitude, one spare bit for the sign.
    return unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)


def _decimal_any(value: Any, scale: int, precision: int) -> bytes | None:
    """The general decimal rule (floats, Decimals, exponents): as `_decimal` in the envelope."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int) or -exponent > scale:
        return None
    unscaled = int("".join(map(str, digits))) * 10 ** (exponent + scale)
    if unscaled >= 10**precision:
        return None
    return _decimal_bytes(-unscaled if sign else unscaled)


def _micros(moment: datetime) -> int | None:
    if moment.tzinfo is None:
        return None
    delta = moment - _EPOCH
    us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return us if _SAFE_MIN_US < us < _SAFE_MAX_US else None


def _timestamp(value: Any) -> int | None:
    if type(value) is str:
        return _micros(datetime.fromisoformat(value.replace("Z", "+00:00")))
    if isinstance(value, datetime):
        return _micros(value)
    return None


def _uuid(value: Any) -> str:
    # Raises ValueError/TypeError for a non-UUID: the encoder gives up, the reference reports.
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value) is not str:
        raise TypeError("not a UUID")
    return str(uuid.UUID(value))


def _nullable(schema: Any) -> bool:
    return schema == "null" or (isinstance(schema, list) and "null" in schema)


def _write_bytes(src: Source, ind: int, expr: str) -> None:
    b = src.var("b")
    src.emit(ind, f"{b} = {expr}")
    src.emit(ind, f"n = len({b})")
    src.emit(ind, f"out += _SMALL[n] if n < {_SMALL_MAX} else _varint(n)")
    src.emit(ind, f"out += {b}")


def _gen(src: Source, ind: int, schema: Any, v: str, depth: int = 0) -> None:
    """Emit code that checks value `v` against `schema` and appends its encoding to `out`,
    or returns None (reference path) when it does not plainly conform."""
    if depth > 32:
        raise Unsupported("too deep")
    if isinstance(schema, list):
        _gen_union(src, ind, schema, v, depth)
        return
    if isinstance(schema, dict):
        kind, logical = schema.get("type"), schema.get("logicalType")
        if kind == "record":
            _gen_record(src, ind, schema, v, depth)
        elif kind == "array":
            src.emit(ind, f"if type({v}) is not list: return None")
            src.emit(ind, f"if {v}:")
            src.emit(ind + 1, f"out += _varint(len({v}))")
            item = src.var("i")
            src.emit(ind + 1, f"for {item} in {v}:")
            _gen(src, ind + 2, schema["items"], item, depth + 1)
            src.emit(ind, "out += b'\\x00'")
        elif kind == "map":
            src.emit(ind, f"if type({v}) is not dict: return None")
            src.emit(ind, f"if {v}:")
            src.emit(ind + 1, f"out += _varint(len({v}))")
            key, item = src.var("k"), src.var("i")
            src.emit(ind + 1, f"for {key}, {item} in {v}.items():")
            src.emit(ind + 2, f"if type({key}) is not str: return None")
            _write_bytes(src, ind + 2, f"{key}.encode()")
            _gen(src, ind + 2, schema["values"], item, depth + 1)
            src.emit(ind, "out += b'\\x00'")
        elif kind == "enum":
            index = src.const({s: _varint(i) for i, s in enumerate(schema["symbols"])})
            e = src.var("e")
            src.emit(ind, f"{e} = {index}.get({v}) if type({v}) is str else None")
            src.emit(ind, f"if {e} is None: return None")
            src.emit(ind, f"out += {e}")
        elif logical is None and kind in _PRIMITIVES:
            _gen(src, ind, kind, v, depth)
        elif logical == "uuid" and kind == "string":
            s = src.var("s")
            src.emit(ind, f"{s} = {v} if type({v}) is str and _UUID.fullmatch({v}) else _uuid({v})")
            _write_bytes(src, ind, f"{s}.encode()")
        elif logical == "timestamp-micros" and kind == "long":
            t = src.var("t")
            src.emit(ind, f"{t} = _timestamp({v})")
            src.emit(ind, f"if {t} is None: return None")
            src.emit(ind, f"out += _varint({t})")
        elif logical == "decimal" and kind == "bytes":
            _gen_decimal(src, ind, schema, v)
        else:
            raise Unsupported(f"{kind}/{logical}")
        return
    if schema == "string":
        src.emit(ind, f"if type({v}) is not str: return None")
        _write_bytes(src, ind, f"{v}.encode()")
    elif schema in ("int", "long"):
        lo, hi = (_INT_MIN, _INT_MAX) if schema == "int" else (_LONG_MIN, _LONG_MAX)
        src.emit(ind, f"if type({v}) is not int or not {lo} <= {v} <= {hi}: return None")
        src.emit(ind, f"out += _SMALL[{v}] if 0 <= {v} < {_SMALL_MAX} else _varint({v})")
    elif schema in ("float", "double"):
        pack = "_DOUBLE" if schema == "double" else "_FLOAT"
        src.emit(ind, f"if type({v}) is float: out += {pack}({v})")
        src.emit(ind, f"elif type({v}) is int: out += {pack}(float({v}))")
        src.emit(ind, "else: return None")
    elif schema == "boolean":
        src.emit(ind, f"if {v} is True: out += b'\\x01'")
        src.emit(ind, f"elif {v} is False: out += b'\\x00'")
        src.emit(ind, "else: return None")
    elif schema == "null":
        src.emit(ind, f"if {v} is not None: return None")
    elif schema == "bytes":
        src.emit(ind, f"if type({v}) is not str: return None")
        _write_bytes(src, ind, f"{v}.encode()")
    else:  # a named type referenced by name: the reference interpreter refuses it too
        raise Unsupported(str(schema))


def _gen_decimal(src: Source, ind: int, schema: dict[str, Any], v: str) -> None:
    # The reference quantizes in the default context (28 digits): beyond, it refuses.
    scale, precision = int(schema.get("scale", 0)), min(int(schema["precision"]), 28)
    m, u, d = src.var("m"), src.var("u"), src.var("d")
    src.emit(ind, f"{m} = _DECIMAL.fullmatch({v}) if type({v}) is str else None")
    src.emit(ind, f"if {m} is not None:")
    # "12.5" at scale 2: unscaled 1250, one int() of the digits, no Decimal arithmetic.
    src.emit(ind + 1, f"{d} = {m}.group(2) or ''")
    src.emit(ind + 1, f"if len({d}) > {scale}: return None")
    src.emit(ind + 1, f"{u} = int({m}.group(1) + {d} + '0' * ({scale} - len({d})))")
    src.emit(ind + 1, f"if not -{10**precision} < {u} < {10**precision}: return None")
    # _decimal_bytes inlined: two's complement sized from the magnitude, as fastavro does.
    src.emit(ind + 1, f"{m} = {u}.to_bytes((abs({u}).bit_length() + 8) >> 3, 'big', signed=True)")
    src.emit(
        ind, f"elif type({v}) is int and -{10**precision} < {v} * {10**scale} < {10**precision}:"
    )
    src.emit(ind + 1, f"{m} = _decimal_bytes({v} * {10**scale})")
    src.emit(ind, "else:")
    src.emit(ind + 1, f"{m} = _decimal_any({v}, {scale}, {precision})")
    src.emit(ind + 1, f"if {m} is None: return None")
    _write_bytes(src, ind, m)


def _gen_union(src: Source, ind: int, schema: list[Any], v: str, depth: int) -> None:
    branches = [(i, s) for i, s in enumerate(schema) if s != "null"]
    null = next((i for i, s in enumerate(schema) if s == "null"), None)
    src.emit(ind, f"if {v} is None:")
    if null is None:
        src.emit(ind + 1, "return None")
    else:
        src.emit(ind + 1, f"out += {_BYTE[null << 1]!r}")
    if len(branches) == 1:
        index, branch = branches[0]
        src.emit(ind, "else:")
        src.emit(ind + 1, f"out += {_BYTE[index << 1]!r}")
        _gen(src, ind + 1, branch, v, depth + 1)
        return
    # Several branches (e.g. a typed properties map): the branch of the value's JSON type,
    # as the reference picks it, for plain primitive branches with distinct JSON types only.
    kinds = {"boolean": bool, "int": int, "long": int, "float": float, "double": float}
    by_type: dict[type, tuple[int, str]] = {}
    for index, branch in branches:
        py = kinds.get(branch) if isinstance(branch, str) else None
        py = str if branch == "string" else py
        if py is None or py in by_type:
            raise Unsupported("union")
        by_type[py] = (index, branch)
    for py, (index, branch) in by_type.items():
        src.emit(ind, f"elif type({v}) is {py.__name__}:")
        src.emit(ind + 1, f"out += {_BYTE[index << 1]!r}")
        _gen(src, ind + 1, branch, v, depth + 1)
    src.emit(ind, "else:")
    src.emit(ind + 1, "return None")


def _default_bytes(field_type: Any, default: Any) -> bytes | None:
    """A field's default as fastavro encodes it from the real schema (what the reference
    writes when the field is absent), or None when that cannot be worked out here."""
    try:
        record = {
            "type": "record",
            "name": "_Default",
            "fields": [{"name": "v", "type": field_type}],
        }
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, fastavro.parse_schema(record), {"v": default})
    except Exception:  # a named reference, a default that does not encode: the reference decides
        return None
    return buffer.getvalue()


def _gen_record(
    src: Source,
    ind: int,
    schema: dict[str, Any],
    v: str,
    depth: int,
    *,
    overrides: Mapping[str, str] | None = None,
) -> None:
    fields = schema["fields"]
    if overrides is None:  # the top level checks its own keys (the envelope differs)
        names = src.const(frozenset(f["name"] for f in fields))
        src.emit(ind, f"if type({v}) is not dict or not {v}.keys() <= {names}: return None")
    for f in fields:
        name, ftype = f["name"], f["type"]
        fv = src.var("f")
        get = overrides[name] if overrides and name in overrides else f"{v}.get({name!r})"
        # As the reference: absent, or null where null is not allowed, takes the default,
        # else null where allowed, else it is "required". Every check below refuses None
        # where the schema does, so absence needs no test of its own unless a default or
        # a union with null makes it differ.
        nullable = _nullable(ftype)
        if "default" not in f or (nullable and f["default"] is None):
            src.emit(ind, f"{fv} = {get}")
            _gen(src, ind, ftype, fv, depth + 1)
            continue
        encoded = _default_bytes(ftype, f["default"])
        if nullable:  # null and absent differ: null, or the (non-null) default
            if overrides and name in overrides:
                raise Unsupported(name)
            src.emit(ind, f"{fv} = {v}.get({name!r}, _MISSING)")
            src.emit(ind, f"if {fv} is _MISSING:")
        else:
            src.emit(ind, f"{fv} = {get}")
            src.emit(ind, f"if {fv} is None:")
        src.emit(ind + 1, "return None" if encoded is None else f"out += {encoded!r}")
        src.emit(ind, "else:")
        _gen(src, ind + 1, ftype, fv, depth + 1)


def compile_encoder(et: EventType) -> Encoder | None:
    """The compiled encoder of an event type, or None when its schema is not an event
    (no envelope) or uses what only the reference path handles."""
    schema = et.schema
    names = [f["name"] for f in schema.get("fields", [])]
    if not set(_ENVELOPE) <= set(names):
        return None
    src = Source()
    client_fields = frozenset(names) - {"received_at", "source"}
    src.emit(0, "def encode(out, data, source, context, now_us):")
    src.emit(1, "try:")
    src.emit(
        2,
        f"if type(data) is not dict or not data.keys() <= {src.const(client_fields)}: return None",
    )
    # The envelope as validate_event enriches it: generated event_id, occurred_at defaulting
    # to now, the server's time and source, the server's context under the client's.
    src.emit(2, "event_id = data.get('event_id')")
    src.emit(2, "if event_id is None: event_id = str(_uuid4())")
    src.emit(2, "user_id = data.get('user_id')")
    src.emit(2, "if type(user_id) is not str or not user_id: return None")
    # A request's events share `now`: its varint is encoded once (a tuple, swapped whole,
    # so threads sharing the encoder never see half an update).
    src.emit(2, "cached = _NOW[0]")
    src.emit(2, "if cached[0] != now_us: cached = _NOW[0] = (now_us, _varint(now_us))")
    src.emit(2, "now = cached[1]")
    src.emit(2, "occurred = data.get('occurred_at')")
    src.emit(2, "if occurred is None: occurred = now")
    src.emit(2, "else:")
    src.emit(3, "occurred = _timestamp(occurred)")
    src.emit(3, "if occurred is None: return None")
    src.emit(3, "occurred = _varint(occurred)")
    src.emit(2, "ctx = data.get('context')")
    src.emit(2, "if ctx is None: ctx = dict(context) if context else None")
    src.emit(2, "elif type(ctx) is not dict: return None")
    src.emit(2, "elif context: ctx = {**context, **ctx}")
    src.emit(2, "if type(source) is not str: return None")
    overrides = {"user_id": "user_id", "source": "source", "context": "ctx"}
    try:
        _gen_envelope(src, 2, schema, overrides)
    except Unsupported:
        return None
    src.emit(2, "return user_id.encode(), event_id")
    src.emit(1, "except Exception:")  # anything odd: the reference path decides and reports
    src.emit(2, "return None")
    namespace: dict[str, Any] = {
        **src.consts,
        "_MISSING": _MISSING,
        "_NOW": [(None, b"")],
        "_BYTE": _BYTE,
        "_SMALL": _SMALL,
        "_varint": _varint,
        "_decimal_bytes": _decimal_bytes,
        "_decimal_any": _decimal_any,
        "_timestamp": _timestamp,
        "_uuid": _uuid,
        "_uuid4": uuid.uuid4,
        "_UUID": _UUID,
        "_DECIMAL": _DECIMAL,
        "_DOUBLE": _DOUBLE,
        "_FLOAT": _FLOAT,
    }
    code = "\n".join(src.lines)
    exec(compile(code, f"<keel encoder {et.type}>", "exec"), namespace)
    encode: Encoder = namespace["encode"]
    encode.__doc__ = code  # the generated source, for whoever debugs it
    return encode


_MISSING = object()


def _gen_envelope(
    src: Source, ind: int, schema: dict[str, Any], overrides: Mapping[str, str]
) -> None:
    for f in schema["fields"]:
        name, ftype = f["name"], f["type"]
        timestamp = isinstance(ftype, dict) and ftype.get("logicalType") == "timestamp-micros"
        if name in ("occurred_at", "received_at"):
            if not (timestamp and ftype.get("type") == "long"):
                raise Unsupported(name)
            src.emit(ind, f"out += {'occurred' if name == 'occurred_at' else 'now'}")
            continue
        if name == "event_id":
            if not (
                isinstance(ftype, dict)
                and ftype.get("logicalType") == "uuid"
                and ftype.get("type") == "string"
            ):
                raise Unsupported("event_id")
            src.emit(
                ind,
                "if type(event_id) is not str or not _UUID.fullmatch(event_id): event_id = _uuid(event_id)",
            )
            _write_bytes(src, ind, "event_id.encode()")
            continue
        _gen_record(src, ind, {"fields": [f]}, "data", 0, overrides=overrides)
