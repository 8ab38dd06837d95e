"""The event catalog: one `.avsc` record per event type under `schemas/catalog/`.

The file name is the event type (`events/order.placed.avsc` defines `order.placed`); the
record's `keel.topic` attribute names its topic (default `events`, keyed by user_id so one
user's actions stay in order). Adding an event type is adding one file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro

from keel.schemas.errors import InvalidSchema, UnknownEventType

CATALOG_DIR = Path(__file__).with_name("catalog")
DEFAULT_TOPIC = "events"


@dataclass(frozen=True)
class EventType:
    type: str
    topic: str
    record_name: str
    schema: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False, compare=False)

    @property
    def subject(self) -> str:
        """TopicRecordNameStrategy: several event types share a topic, each its own subject."""
        return f"{self.topic}-{self.record_name}"

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.schema["fields"]]


class Catalog:
    def __init__(self, event_types: dict[str, EventType]) -> None:
        self._types = event_types

    def get(self, event_type: str) -> EventType:
        try:
            return self._types[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._types

    def types(self) -> list[str]:
        return sorted(self._types)

    def topics(self) -> set[str]:
        return {t.topic for t in self._types.values()}

    def by_record_name(self, record_name: str) -> EventType | None:
        return next((t for t in self._types.values() if t.record_name == record_name), None)


def parse_avsc(path: Path) -> EventType:
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidSchema(f"{path}: not valid JSON: {exc}") from None
    return event_type_from_schema(path.name.removesuffix(".avsc"), schema, str(path))


def event_type_from_schema(event_type: str, schema: dict[str, Any], where: str = "") -> EventType:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise InvalidSchema(f"{where or event_type}: an event schema must be an Avro record")
    try:
        parsed = fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise InvalidSchema(f"{where or event_type}: {exc}") from None
    namespace = schema.get("namespace")
    name = (
        schema["name"]
        if "." in schema["name"] or not namespace
        else f"{namespace}.{schema['name']}"
    )
    return EventType(event_type, schema.get("keel.topic", DEFAULT_TOPIC), name, schema, parsed)


@lru_cache(maxsize=8)
def load_catalog(root: Path | None = None) -> Catalog:
    """Every `.avsc` under `root` (recursively); cached per folder."""
    root = root or CATALOG_DIR
    types: dict[str, EventType] = {}
    for path in sorted(root.rglob("*.avsc")):
        et = parse_avsc(path)
        if et.type in types:
            raise InvalidSchema(f"event type {et.type} is defined twice ({path})")
        types[et.type] = et
    return Catalog(types)
