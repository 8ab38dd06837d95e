"""Keel's Confluent-framed Avro in and out of the stream processors, through
`schemas.serde.AvroSerde` (writer schemas fetched from the registry by id, cached).

- `AvroCodec.decode(bytes) -> record` for the source topic, in plain values: a `uuid` is
  its string and a `timestamp-micros` its integer microseconds, as written (fastavro reads
  them with a copy of the writer schema that has those two logical types stripped, which
  skips building `UUID` and `datetime` objects only for `streams.events` to turn them back:
  a third of the decoding time, profiled). Other logical types (decimal, date, ...) come as
  fastavro makes them. A `schemas.errors.DecodeError` (undecodable bytes, unknown schema
  id) marks the message as poison.
- `AvroCodec.encode_job(job_type, record, topic)` encodes a job event with its catalog
  schema under the subject of the topic it is really produced to.
- `KeelAvroCodec` is the same decoding as a Faust codec (`value_serializer="keel_avro"`)
  for agents a team writes by hand.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Mapping
from typing import Any

import fastavro
from faust.serializers import codecs

from keel.settings import KeelSettings
from schemas.errors import DecodeError, RegistryError
from schemas.wire import unframe

_HEADER = struct.Struct(">bI")  # the Confluent wire format header: magic 0, schema id


class AvroCodec:
    """Decoding and encoding with the registry; build once per worker (caches inside)."""

    def __init__(self, serde: Any, catalog: Any) -> None:
        self.serde = serde
        self.catalog = catalog
        self._job_types: dict[tuple[str, str], Any] = {}
        self._plain: dict[int, Any] = {}  # schema id -> parsed writer schema, plain values

    @classmethod
    def from_settings(cls, settings: KeelSettings) -> AvroCodec:
        from schemas.catalog import load_catalog
        from schemas.registry.client import RegistryClient
        from schemas.serde import AvroSerde

        catalog = load_catalog()
        return cls(AvroSerde(RegistryClient(settings.schema_registry_url), catalog), catalog)

    def decode(self, data: bytes) -> dict[str, Any]:
        if type(data) is bytes and len(data) >= _HEADER.size and data[0] == 0:
            schema_id = _HEADER.unpack_from(data)[1]  # hot path: no memoryview, no copy
            payload = io.BytesIO(data)
            payload.seek(_HEADER.size)
        else:  # the wire module's checks and errors
            schema_id, view = unframe(data)
            payload = io.BytesIO(view)
        schema = self._plain.get(schema_id)
        if schema is None:
            schema = self._plain_schema(schema_id)
        try:
            record = fastavro.schemaless_reader(payload, schema, None)
        except Exception as exc:  # truncated or corrupt Avro raises EOFError, ValueError, ...
            raise DecodeError(
                f"undecodable Avro payload for schema id {schema_id}: {exc!r}"
            ) from exc
        if type(record) is not dict:
            raise DecodeError(f"schema id {schema_id} is not a record schema")
        return record

    def _plain_schema(self, schema_id: int) -> Any:
        """The writer schema of `schema_id` (from the registry, once) without the logical
        types whose plain value is what was written."""
        try:
            schema = self.serde.registry.get_schema(schema_id)
        except RegistryError as exc:
            if exc.retriable:
                raise
            raise DecodeError(f"unknown schema id {schema_id}: {exc}") from exc
        parsed = fastavro.parse_schema(strip_logical_types(schema))
        self._plain[schema_id] = parsed
        return parsed

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


PLAIN_LOGICAL_TYPES = frozenset({"uuid", "timestamp-micros"})


def strip_logical_types(schema: Any) -> Any:
    """A copy of a schema (parsed JSON) without the logical types in PLAIN_LOGICAL_TYPES."""
    if isinstance(schema, dict):
        return {
            k: strip_logical_types(v)
            for k, v in schema.items()
            if not (k == "logicalType" and v in PLAIN_LOGICAL_TYPES)
        }
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


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
