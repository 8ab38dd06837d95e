"""Avro encoding and decoding in the Confluent wire format, with fastavro.

Parsed schemas and registry ids are cached, so after the first event of a type encoding is
one fastavro `schemaless_writer` call plus a 5-byte header."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

import fastavro

from keel.schemas.catalog import Catalog, EventType, load_catalog
from keel.schemas.errors import DecodeError, RegistryError
from keel.schemas.fastread import Decoder, compile_decoder
from keel.schemas.registry.client import RegistryClient, canonical
from keel.schemas.wire import HEADER_SIZE, frame, schema_id_of, unframe

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


class AvroSerde:
    def __init__(
        self, registry: RegistryClient | None = None, catalog: Catalog | None = None
    ) -> None:
        self.registry = registry or RegistryClient()
        self.catalog = catalog or load_catalog()
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}  # subject -> schema id of the catalog's version
        self._headers: dict[str, bytes] = {}  # subject -> wire format header
        self._writers: dict[int, Any] = {}  # schema id -> parsed writer schema
        self._plain_writers: dict[int, Any] = {}  # the same, plain logical types stripped
        self._plain_decoders: dict[int, Decoder] = {}  # schema id -> compiled (fastread)
        self._full_decoders: dict[int, Decoder] = {}  # the same, logical types as fastavro's
        self._parsed_readers: dict[str, Any] = {}  # canonical reader text -> parsed
        # id(reader dict) -> (that dict, parsed): the hot path skips canonicalising the
        # reader schema on every call. Holding the dict keeps its id from being reused.
        self._readers: dict[int, tuple[Mapping[str, Any], Any]] = {}

    # -- encoding -------------------------------------------------------------------------
    def schema_id(self, et: EventType) -> int:
        """The registry id of this event type's schema under its subject (registered once)."""
        schema_id = self._ids.get(et.subject)
        if schema_id is None:
            schema_id = self.registry.register(et.subject, et.schema)
            with self._lock:
                self._ids[et.subject] = schema_id
                self._writers.setdefault(schema_id, et.parsed)
        return schema_id

    def encode(self, event_type: str, record: Mapping[str, Any]) -> bytes:
        return self.encode_with(self.catalog.get(event_type), record)

    def header(self, et: EventType) -> bytes:
        """The 5-byte wire format header of this event type's schema (registered once)."""
        header = self._headers.get(et.subject)
        if header is None:
            header = frame(self.schema_id(et), b"")
            self._headers[et.subject] = header
        return header

    def encode_with(self, et: EventType, record: Mapping[str, Any]) -> bytes:
        # Hot path: one dict lookup for the ready-made 5-byte header, then fastavro.
        header = self._headers.get(et.subject) or self.header(et)
        buffer = io.BytesIO(header)
        buffer.seek(len(header))
        fastavro.schemaless_writer(buffer, et.parsed, record)
        return buffer.getvalue()

    # -- decoding -------------------------------------------------------------------------
    def _fetch(self, schema_id: int) -> dict[str, Any]:
        """The writer schema of `schema_id` from the registry; DecodeError if it has none."""
        try:
            return self.registry.get_schema(schema_id)
        except RegistryError as exc:
            if exc.retriable:
                raise
            raise DecodeError(f"unknown schema id {schema_id}: {exc}") from exc

    def _writer(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(self._fetch(schema_id))
            with self._lock:
                self._writers[schema_id] = parsed
        return parsed

    def _plain_writer(self, schema_id: int) -> Any:
        parsed = self._plain_writers.get(schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(strip_logical_types(self._fetch(schema_id)))
            with self._lock:
                self._plain_writers[schema_id] = parsed
        return parsed

    def _decoder(self, schema_id: int, plain: bool) -> Decoder:
        """The compiled decoder of a writer schema (`keel.schemas.fastread`), plain (`uuid` and
        `timestamp-micros` as written) or full (every logical type as fastavro makes it), or
        fastavro's reader for a schema it does not compile."""
        cache = self._plain_decoders if plain else self._full_decoders
        decoder = cache.get(schema_id)
        if decoder is None:
            schema = self._fetch(schema_id)
            decoder = compile_decoder(strip_logical_types(schema) if plain else schema)
            if decoder is None:
                parsed = self._plain_writer(schema_id) if plain else self._writer(schema_id)

                def decoder(data: bytes, pos: int) -> dict[str, Any]:
                    payload = io.BytesIO(data)
                    payload.seek(pos)
                    return self._read(payload, parsed, None, schema_id)

            with self._lock:
                cache[schema_id] = decoder
        return decoder

    def _decode(self, data: bytes, plain: bool) -> dict[str, Any]:
        schema_id = schema_id_of(data)
        if schema_id is None:  # the wire module's checks and errors
            schema_id, _payload = unframe(data)
            data = bytes(data)  # a bytearray or memoryview: the decoders read bytes
        cache = self._plain_decoders if plain else self._full_decoders
        decoder = cache.get(schema_id) or self._decoder(schema_id, plain)
        try:
            return decoder(data, HEADER_SIZE)
        except DecodeError:
            raise
        except Exception as exc:  # truncated or corrupt Avro: IndexError, EOFError, ValueError
            raise DecodeError(
                f"undecodable Avro payload for schema id {schema_id}: {exc!r}"
            ) from exc

    def decode_plain(self, data: bytes) -> dict[str, Any]:
        """Decode with the writer schema only, `uuid` as its string and `timestamp-micros` as
        its integer microseconds, as written: no `UUID`/`datetime` objects built for a
        consumer that wants plain values (a third of the decoding time, profiled in the
        stream workers). Other logical types come as `decode` makes them. The hot path of
        stream workers and sinks: a decoder compiled per schema reads the bytes in place."""
        return self._decode(data, plain=True)

    def decode(self, data: bytes, reader_schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Decode with the writer schema (every logical type as fastavro makes it), or
        resolved to `reader_schema`. Without a reader schema, a decoder compiled per writer
        schema reads the bytes in place, with exactly fastavro's results (job workers)."""
        if reader_schema is None:
            return self._decode(data, plain=False)
        schema_id, payload = unframe(data)
        writer = self._writer(schema_id)
        hit = self._readers.get(id(reader_schema))
        reader = hit[1] if hit is not None and hit[0] is reader_schema else None
        if reader is None:
            reader = self._reader(reader_schema)
        return self._read(io.BytesIO(payload), writer, reader, schema_id)

    @staticmethod
    def _read(payload: io.BytesIO, writer: Any, reader: Any, schema_id: int) -> dict[str, Any]:
        try:
            record = fastavro.schemaless_reader(payload, writer, reader)
        except Exception as exc:  # truncated or corrupt Avro raises EOFError, ValueError, ...
            raise DecodeError(
                f"undecodable Avro payload for schema id {schema_id}: {exc!r}"
            ) from exc
        if type(record) is not dict:
            raise DecodeError(f"schema id {schema_id} is not a record schema")
        return record

    def _reader(self, reader_schema: Mapping[str, Any]) -> Any:
        """Parse a reader schema once per distinct text (a reader schema is not to be changed
        after it was first used: pass a new dict instead)."""
        key = canonical(dict(reader_schema))
        parsed = self._parsed_readers.get(key)
        if parsed is None:
            try:
                parsed = fastavro.parse_schema(dict(reader_schema))
            except Exception as exc:  # fastavro raises several unrelated types
                raise DecodeError(f"invalid reader schema: {exc}") from exc
        with self._lock:
            self._parsed_readers[key] = parsed
            if len(self._readers) >= 1024:  # callers building a new dict per call
                self._readers.clear()
            self._readers[id(reader_schema)] = (reader_schema, parsed)
        return parsed

    def decode_event(self, data: bytes) -> tuple[str, dict[str, Any]]:
        record = self.decode(data)
        event_type = record.get("type")
        if not isinstance(event_type, str):
            # Job records carry no `type` field: name them by the catalog entry of their record.
            schema_id, _ = unframe(data)
            name = (
                self._writers[schema_id].get("name")
                if isinstance(self._writers[schema_id], dict)
                else None
            )
            et = self.catalog.by_record_name(name) if name else None
            event_type = et.type if et else str(name)
        return event_type, record
