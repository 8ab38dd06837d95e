"""The event envelope and validation of incoming events against their Avro schema.

`EventIn` is what a client sends (HTTP body or SDK call); `validate_event` checks it
against the envelope and the event type's `.avsc`, enriches it (`event_id`,
`received_at`, `source`, context) and returns the record ready for Avro encoding. Every
problem is reported with its dotted field path and the rule it broke."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keel.schemas.catalog import Catalog, EventType, load_catalog
from keel.schemas.errors import ValidationFailed

# Envelope fields in the order every event record starts with them (checked by a test
# against each .avsc, so the model and the schemas cannot drift apart).
ENVELOPE_FIELDS = ("event_id", "type", "user_id", "occurred_at", "received_at", "source", "context")
SERVER_FIELDS = frozenset({"received_at", "source"})
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


class Context(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str | None = None
    user_agent: str | None = None
    session_id: str | None = None


class EventIn(BaseModel):
    """One event as a client sends it: the envelope plus its type's own fields (extra keys)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    event_id: uuid.UUID | None = Field(None, description="Idempotency key; generated when absent.")
    type: str = Field(description="Event type, e.g. order.placed (see the catalog).")
    user_id: str = Field(min_length=1, description="The acting user; the partition key.")
    occurred_at: datetime | None = Field(
        None, description="Client time (ISO 8601); defaults to now."
    )
    context: Context | None = None


class EventBatchIn(BaseModel):
    events: list[EventIn]


def validate_event(
    data: Mapping[str, Any],
    *,
    source: str,
    context: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    catalog: Catalog | None = None,
) -> tuple[EventType, dict[str, Any]]:
    """Validate one event; return its type and the Avro-ready record, or raise ValidationFailed."""
    if not isinstance(data, Mapping):
        raise ValidationFailed([{"field": "", "error": "an event must be a JSON object"}])
    catalog = catalog or load_catalog()
    event_type = data.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValidationFailed(
            [{"field": "type", "error": "required" if event_type is None else "must be a string"}]
        )
    if event_type not in catalog:
        raise ValidationFailed([{"field": "type", "error": f"unknown event type {event_type!r}"}])
    et = catalog.get(event_type)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)

    errors: list[dict[str, Any]] = []
    for name in SERVER_FIELDS:
        if name in data:
            errors.append({"field": name, "error": "set by the server; must not be sent"})
    merged_context = (
        dict(data.get("context") or {})
        if isinstance(data.get("context"), Mapping)
        else data.get("context")
    )
    if context and isinstance(merged_context, dict):
        for key, value in context.items():
            merged_context.setdefault(key, value)
    elif context and merged_context is None:
        merged_context = dict(context)
    raw = {
        **data,
        "event_id": data.get("event_id") if data.get("event_id") is not None else str(uuid.uuid4()),
        "occurred_at": data.get("occurred_at") if data.get("occurred_at") is not None else now,
        "received_at": now,
        "source": source,
        "context": merged_context,
    }
    record = _convert_record(et.schema, raw, "", errors)
    if record and record.get("user_id") == "":
        errors.append({"field": "user_id", "error": "must not be empty"})
    if errors:
        raise ValidationFailed(errors)
    return et, record


# -- conversion of JSON values to Avro-ready Python values, collecting errors -------------


def _path(prefix: str, name: str | int) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _convert_record(
    schema: dict[str, Any], value: Any, path: str, errors: list[dict[str, Any]]
) -> Any:
    if not isinstance(value, Mapping):
        errors.append({"field": path, "error": "must be an object"})
        return None
    known = {f["name"] for f in schema["fields"]}
    for key in value:
        if key not in known:
            errors.append({"field": _path(path, key), "error": "unknown field"})
    out: dict[str, Any] = {}
    for f in schema["fields"]:
        name = f["name"]
        fpath = _path(path, name)
        if name not in value or (value[name] is None and not _nullable(f["type"])):
            if "default" in f:
                out[name] = f["default"]
            elif _nullable(f["type"]):
                out[name] = None
            else:
                errors.append({"field": fpath, "error": "required"})
            continue
        out[name] = _convert(f["type"], value[name], fpath, errors)
    return out


def _nullable(schema: Any) -> bool:
    return schema == "null" or (isinstance(schema, list) and "null" in schema)


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return str(schema.get("logicalType") or schema["type"])
    return "union"


def _convert(schema: Any, value: Any, path: str, errors: list[dict[str, Any]]) -> Any:
    if isinstance(schema, list):
        return _convert_union(schema, value, path, errors)
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        kind = schema["type"]
        if kind == "record":
            return _convert_record(schema, value, path, errors)
        if kind == "array":
            if not isinstance(value, list):
                errors.append({"field": path, "error": "must be an array"})
                return None
            return [
                _convert(schema["items"], v, _path(path, i), errors) for i, v in enumerate(value)
            ]
        if kind == "map":
            if not isinstance(value, Mapping):
                errors.append({"field": path, "error": "must be an object"})
                return None
            return {
                str(k): _convert(schema["values"], v, _path(path, k), errors)
                for k, v in value.items()
            }
        if kind == "enum":
            if value not in schema["symbols"]:
                errors.append(
                    {"field": path, "error": f"must be one of {', '.join(schema['symbols'])}"}
                )
            return value
        if logical == "decimal":
            return _decimal(value, schema, path, errors)
        if logical in ("timestamp-micros", "timestamp-millis"):
            return _timestamp(value, path, errors)
        if logical == "uuid":
            try:
                return (
                    str(uuid.UUID(str(value)))
                    if isinstance(value, str | uuid.UUID)
                    else _fail(errors, path, "must be a UUID")
                )
            except ValueError:
                return _fail(errors, path, "must be a UUID")
        return _convert(kind, value, path, errors)
    # primitives
    if schema == "string":
        return value if isinstance(value, str) else _fail(errors, path, "must be a string")
    if schema in ("int", "long"):
        lo, hi = (INT_MIN, INT_MAX) if schema == "int" else (LONG_MIN, LONG_MAX)
        if isinstance(value, bool) or not isinstance(value, int):
            return _fail(errors, path, "must be an integer")
        return value if lo <= value <= hi else _fail(errors, path, f"must be between {lo} and {hi}")
    if schema in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _fail(errors, path, "must be a number")
        try:
            return float(value)
        except OverflowError:  # an integer beyond a double's range
            return _fail(errors, path, "out of range")
    if schema == "boolean":
        return value if isinstance(value, bool) else _fail(errors, path, "must be true or false")
    if schema == "null":
        return None if value is None else _fail(errors, path, "must be null")
    if schema == "bytes":
        return value.encode() if isinstance(value, str) else _fail(errors, path, "must be a string")
    return _fail(errors, path, f"unsupported schema type {schema}")


def _convert_union(schema: list[Any], value: Any, path: str, errors: list[dict[str, Any]]) -> Any:
    if value is None:
        return None if "null" in schema else _fail(errors, path, "must not be null")
    branches = [s for s in schema if s != "null"]
    if len(branches) == 1:
        return _convert(branches[0], value, path, errors)
    # Several branches (e.g. a typed properties map): the first one that accepts the value.
    for branch in _by_json_type(branches, value):
        trial: list[dict[str, Any]] = []
        converted = _convert(branch, value, path, trial)
        if not trial:
            return converted
    allowed = ", ".join(_type_name(b) for b in branches)
    return _fail(errors, path, f"must be one of: {allowed}")


def _by_json_type(branches: list[Any], value: Any) -> list[Any]:
    """Try the branch that matches the JSON type first (a bool is not a long, 1 is a long)."""
    order = {"boolean": 0, "long": 1, "int": 1, "double": 2, "float": 2, "string": 3}
    if isinstance(value, bool):
        return sorted(branches, key=lambda b: 0 if b == "boolean" else 9)
    if isinstance(value, int):
        return sorted(branches, key=lambda b: order.get(b, 9) if isinstance(b, str) else 9)
    return branches


def _decimal(value: Any, schema: dict[str, Any], path: str, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return _fail(errors, path, "must be a decimal number (string or number)")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return _fail(errors, path, "must be a decimal number")
    if not number.is_finite():
        return _fail(errors, path, "must be a finite decimal number")
    scale, precision = schema.get("scale", 0), schema["precision"]
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > scale:
        return _fail(errors, path, f"at most {scale} decimal places")
    try:
        quantized = number.quantize(Decimal(1).scaleb(-scale))
    except InvalidOperation:  # more digits than the decimal context holds (28)
        return _fail(errors, path, f"at most {precision} digits")
    if len(quantized.as_tuple().digits) > precision:
        return _fail(errors, path, f"at most {precision} digits")
    return quantized


def _timestamp(value: Any, path: str, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return _fail(errors, path, "must be an ISO 8601 date-time")
    else:
        return _fail(errors, path, "must be an ISO 8601 date-time")
    if moment.tzinfo is None:
        return _fail(errors, path, "must carry a time zone (e.g. Z or +00:00)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        return _fail(errors, path, "out of range")


def _fail(errors: list[dict[str, Any]], path: str, message: str) -> None:
    errors.append({"field": path, "error": message})
