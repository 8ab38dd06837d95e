"""From a client's JSON event to bytes for Kafka: validate, enrich, encode, route.

Shared by the HTTP API and the SDK so both accept and refuse exactly the same events.
Pure apart from the serde's registry lookups (done once per event type at warm-up)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from producers.kafka_out import Outgoing
from schemas.catalog import Catalog, EventType, load_catalog
from schemas.envelope import validate_event
from schemas.errors import ValidationFailed
from schemas.serde import AvroSerde


class Pipeline:
    def __init__(
        self,
        serde: AvroSerde,
        *,
        catalog: Catalog | None = None,
        topic_prefix: str = "",
    ) -> None:
        self.serde = serde
        self.catalog = catalog or serde.catalog
        self.topic_prefix = topic_prefix

    def warm_up(self) -> None:
        """Register (or look up) every event type's schema now, so no request waits on it."""
        for name in self.catalog.types():
            self.serde.schema_id(self.catalog.get(name))

    def topic_of(self, et: EventType) -> str:
        return self.topic_prefix + et.topic

    def prepare(
        self,
        event: Any,
        *,
        source: str,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Outgoing:
        """Validate and encode one event; raise ValidationFailed naming each field and rule."""
        et, record = validate_event(
            event, source=source, context=context, now=now, catalog=self.catalog
        )
        try:
            value = self.serde.encode_with(et, record)
        except (ValueError, TypeError, OverflowError) as exc:  # fastavro's own range checks
            raise ValidationFailed([{"field": "", "error": f"not encodable: {exc}"}]) from exc
        return Outgoing(
            self.topic_of(et), record["user_id"].encode(), value, str(record["event_id"])
        )


def default_pipeline(topic_prefix: str = "") -> Pipeline:
    return Pipeline(AvroSerde(catalog=load_catalog()), topic_prefix=topic_prefix)
