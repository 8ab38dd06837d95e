"""Typed events: a decoded Avro record plus where it came from (partition, offset).

Pure: no Kafka, no Faust. Timestamps are normalised to integer epoch microseconds and UUIDs
to strings, so processors work on plain values whether the record came from the worker's
codec (which decodes uuid and timestamp-micros fields to exactly those plain values, see
`keel.streams.codec`), from fastavro with every logical type (datetime, UUID, Decimal) or from
a test.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: Any) -> int:
    """Epoch microseconds of a datetime (naive = UTC) or an int already in microseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, int):
        return value
    raise TypeError(f"not a timestamp: {value!r}")


_AS_IS = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """A JSON-friendly copy: UUID → str, datetime → epoch µs, Decimal → str, bytes → hex.

    Hot path (every field of every event): dispatch on the exact type first, and fall back
    to the abstract checks only for unusual containers."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dict:
        return {k: v if type(v) in _AS_IS else plain(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _AS_IS else plain(v) for v in value]
    if kind is datetime:
        return to_micros(value)
    if kind is uuid.UUID:
        return str(value)
    if kind is Decimal:
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return to_micros(value)
    return value


# Not frozen: a frozen dataclass sets each field through object.__setattr__, about a
# microsecond an event on the hot path. Treat events as read-only all the same.
@dataclass(slots=True)
class Event:
    """One user action, decoded (read-only by convention). `data` holds the record as decoded (in a worker: uuid
    fields as strings, timestamps as epoch µs, decimals as `Decimal`); `get` and `[]` give
    plain values (see `plain`)."""

    type: str
    event_id: str
    user_id: str
    occurred_at: int  # epoch µs, client time
    data: Mapping[str, Any] = field(default_factory=dict)
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0  # Kafka message timestamp

    def __getitem__(self, name: str) -> Any:
        return plain(self.data[name])

    def get(self, name: str, default: Any = None) -> Any:
        """A field as a plain value (converted on access: most fields are never read)."""
        value = self.data.get(name, default)
        return value if type(value) in _AS_IS else plain(value)

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        *,
        partition: int = 0,
        offset: int = 0,
        timestamp_ms: int = 0,
    ) -> Event:
        """Build from a decoded record; missing envelope fields raise KeyError. Only the
        envelope is normalised here (hot path: plain values pass through as they are);
        other fields on access."""
        event_type, event_id = record["type"], record["event_id"]
        user_id, occurred_at = record["user_id"], record["occurred_at"]
        return cls(
            event_type if type(event_type) is str else str(event_type),
            event_id if type(event_id) is str and _canonical(event_id) else _uuid_text(event_id),
            user_id if type(user_id) is str else str(user_id),
            occurred_at if type(occurred_at) is int else to_micros(occurred_at),
            record,
            partition,
            offset,
            timestamp_ms,
        )


def _canonical(text: str) -> bool:
    """A UUID's canonical text (36 characters, lower case), as Keel's producers write it."""
    return len(text) == 36 and text.islower()


def _uuid_text(value: Any) -> str:
    """An event id as text: a UUID in its canonical form (so the same id written in upper
    case by another client dedups with it), anything else as it is."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)
