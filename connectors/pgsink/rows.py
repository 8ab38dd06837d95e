"""The row of an event, pure: decoded values made JSON-friendly (decimals as strings, bytes
as base64, timestamps as integer microseconds, as the webhook sink sends them) and checked,
so a record PostgreSQL would refuse is dead-lettered, not retried; and the settings that
pick what the sink reads (topics, event types)."""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from keel.errors import KeelError
from keel.schemas.catalog import load_catalog

# timestamptz holds years 4713 BC..294276 AD; Python's datetime 1..9999, which is plenty.
_MIN_US = int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
_MIN_US *= 1_000_000
_MAX_US = int(
    (datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
)
_MAX_US *= 1_000_000


class PgSinkError(KeelError):
    """The sink's database cannot be reached or used, or a setting is wrong (one line)."""


class Unwritable(ValueError):
    """A decoded record that cannot be a row (no event_id, a timestamp out of range...)."""


class Row(NamedTuple):
    """One event's row, in the column order of the load table (COPY writes it as is)."""

    event_id: str
    type: str
    user_id: str
    occurred_at_us: int
    received_at_us: int
    source: str
    topic: str
    partition: int
    offset: int
    event: str  # JSON text of the whole event


def _plain(value: Any) -> Any:
    """What orjson cannot write, or jsonb cannot hold, as JSON-friendly values."""
    if isinstance(value, Decimal):
        return str(value)  # exact: money must not become a float
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _scrub(value: Any) -> Any:
    """jsonb (and text) refuse U+0000, and JSON has no NaN or infinity: replace them, rarely
    needed, so only called when the fast path's output shows one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


@functools.lru_cache(maxsize=256)
def _may_hold_floats(event_type: object) -> bool:
    """Whether the catalog's schema of this type has a float or double anywhere (unknown
    types: assume so). Walking every event for NaN was a fifth of the sink's time."""
    if not isinstance(event_type, str) or event_type not in load_catalog():
        return True
    text = json.dumps(load_catalog().get(event_type).schema)
    return '"float"' in text or '"double"' in text


def event_json(event: Mapping[str, Any]) -> str:
    """The event as JSON text jsonb accepts."""
    text = orjson.dumps(event, default=_plain).decode()
    # orjson writes NaN/inf as null: keep what it was, as a string.
    if "\\u0000" in text or (
        "null" in text and _may_hold_floats(event.get("type")) and _has_nonfinite(event)
    ):
        text = orjson.dumps(_scrub(event), default=_plain).decode()
    return text


def _text(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str):
        raise Unwritable(f"field {name!r}: expected a string, got {type(value).__name__}")
    return value.replace("\x00", "\ufffd")


def _micros(event: Mapping[str, Any], name: str) -> int:
    value = event.get(name)
    if isinstance(value, datetime):  # a decoder that builds datetimes
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unwritable(f"field {name!r}: expected timestamp-micros, got {type(value).__name__}")
    if not _MIN_US <= value <= _MAX_US:
        raise Unwritable(f"field {name!r}: {value} microseconds is outside years 1..9999")
    return value


def event_row(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> Row:
    """The row of one decoded event; Unwritable names the field PostgreSQL would refuse."""
    raw_id = event.get("event_id")
    try:
        event_id = str(uuid.UUID(str(raw_id))) if raw_id is not None else None
    except ValueError:
        event_id = None
    if event_id is None:
        raise Unwritable(f"field 'event_id': {raw_id!r} is not a UUID")
    return Row(
        event_id=event_id,
        type=_text(event, "type"),
        user_id=_text(event, "user_id"),
        occurred_at_us=_micros(event, "occurred_at"),
        received_at_us=_micros(event, "received_at"),
        source=_text(event, "source"),
        topic=topic,
        partition=partition,
        offset=offset,
        event=event_json(event),
    )


def parse_types(value: str) -> list[str]:
    """KEEL_PGSINK_TYPES as patterns; each must match a type of the catalog."""
    patterns = [p.strip() for p in value.split(",") if p.strip()]
    known = load_catalog().types()
    for pattern in patterns:
        if not fnmatch.filter(known, pattern):
            raise PgSinkError(
                f"KEEL_PGSINK_TYPES: {pattern!r} matches no event type of the catalog "
                f"({', '.join(known)})"
            )
    return patterns


def wanted(patterns: list[str], event_type: str) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def parse_topics(value: str) -> list[str]:
    topics = [t.strip() for t in value.split(",") if t.strip()]
    if not topics:
        raise PgSinkError("KEEL_PGSINK_TOPICS names no topic")
    return topics
