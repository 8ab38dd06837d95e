"""From a client's JSON event to bytes for Kafka: validate, enrich, encode, route.

Shared by the HTTP API and the SDK so both accept and refuse exactly the same events.
Pure apart from the serde's registry lookups (done once per event type at warm-up).

Hot path: each event type's compiled encoder (`keel.schemas.fastpath`) checks and encodes a
plainly valid event in one pass; anything else takes the reference path, `validate_event`
plus fastavro, which names every bad field and rule. Both give the same bytes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from keel.producers.kafka_out import Outgoing
from keel.schemas.catalog import Catalog, EventType
from keel.schemas.envelope import validate_event
from keel.schemas.errors import ValidationFailed
from keel.schemas.fastpath import Encoder, compile_encoder
from keel.schemas.serde import AvroSerde

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


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
        # event type -> (its topic, its compiled encoder), or None: reference path only.
        self._fast: dict[str, tuple[EventType, str, Encoder] | None] = {}
        self._now: tuple[datetime | None, int] = (None, 0)

    def warm_up(self) -> None:
        """Register (or look up) every event type's schema now, so no request waits on it."""
        for name in self.catalog.types():
            self.serde.schema_id(self.catalog.get(name))
            self._compiled(name)

    def topic_of(self, et: EventType) -> str:
        return self.topic_prefix + et.topic

    def _compiled(self, event_type: str) -> tuple[EventType, str, Encoder] | None:
        if event_type in self._fast:
            return self._fast[event_type]
        entry = None
        if event_type in self.catalog:
            et = self.catalog.get(event_type)
            encoder = compile_encoder(et)
            entry = (et, self.topic_of(et), encoder) if encoder is not None else None
        self._fast[event_type] = entry
        return entry

    def _micros(self, now: datetime) -> int:
        # A request passes one `now` for all its events: convert it once.
        last, us = self._now
        if last is not now:
            us = (now - _EPOCH) // _MICROSECOND
            self._now = (now, us)
        return us

    def prepare(
        self,
        event: Any,
        *,
        source: str,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Outgoing:
        """Validate and encode one event; raise ValidationFailed naming each field and rule."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        event_type = event.get("type") if type(event) is dict else None
        fast = self._compiled(event_type) if type(event_type) is str else None
        if fast is not None:
            et, topic, encoder = fast
            out = bytearray(self.serde.header(et))
            done = encoder(out, event, source, context, self._micros(now))
            if done is not None:
                return Outgoing(topic, done[0], bytes(out), done[1])
        # Not plainly valid (or an unusual schema): the reference path decides and reports.
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
