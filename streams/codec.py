"""Keel's Confluent-framed Avro in and out of the stream processors, through
`keel.schemas.serde.AvroSerde` (writer schemas fetched from the registry by id, cached).

- `AvroCodec.decode(bytes) -> record` for the source topic, in plain values: a `uuid` is
  its string and a `timestamp-micros` its integer microseconds, as written
  (`AvroSerde.decode_plain`: no `UUID` and `datetime` objects built only for
  `keel.streams.events` to turn them back). A `keel.schemas.errors.DecodeError` (undecodable bytes,
  unknown schema id) marks the message as poison.
- `AvroCodec.encode_job(job_type, record, topic)` encodes a job event with its catalog
  schema under the subject of the topic it is really produced to.
- `KeelAvroCodec` is the same decoding as a Faust codec (`value_serializer="keel_avro"`)
  for agents a team writes by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from faust.serializers import codecs

from keel.settings import KeelSettings


class AvroCodec:
    """Decoding and encoding with the registry; build once per worker (caches inside)."""

    def __init__(self, serde: Any, catalog: Any) -> None:
        self.serde = serde
        self.catalog = catalog
        self._job_types: dict[tuple[str, str], Any] = {}

    @classmethod
    def from_settings(cls, settings: KeelSettings) -> AvroCodec:
        from keel.schemas.catalog import load_catalog
        from keel.schemas.registry.client import RegistryClient
        from keel.schemas.serde import AvroSerde

        catalog = load_catalog()
        return cls(AvroSerde(RegistryClient(settings.schema_registry_url), catalog), catalog)

    def decode(self, data: bytes) -> dict[str, Any]:
        return self.serde.decode_plain(data)

    def job_topic(self, job_type: str, prefix: str = "") -> str:
        return prefix + self.catalog.get(job_type).topic

    def encode_job(self, job_type: str, record: Mapping[str, Any], topic: str) -> bytes:
        key = (job_type, topic)
        event_type = self._job_types.get(key)
        if event_type is None:
            base = self.catalog.get(job_type)
            # Same schema, subject named after the topic it really goes to.
            event_type = base if base.topic == topic else dataclasses.replace(base, topic=topic)
            self._job_types[key] = event_type
        return bytes(self.serde.encode_with(event_type, record))


class KeelAvroCodec(codecs.Codec):
    """Faust codec: Confluent-framed Avro bytes to the decoded record (a dict)."""

    avro: AvroCodec | None = None

    def _loads(self, s: bytes) -> Any:
        avro = self.avro
        if avro is None:
            from keel.settings import get_settings

            avro = KeelAvroCodec.avro = AvroCodec.from_settings(get_settings())
        return dict(avro.decode(s))

    def _dumps(self, s: Any) -> bytes:
        if isinstance(s, bytes | bytearray):
            return bytes(s)  # already encoded (e.g. by AvroCodec.encode_job)
        raise TypeError("encode job events with AvroCodec.encode_job; this codec only decodes")


codecs.register("keel_avro", KeelAvroCodec())
