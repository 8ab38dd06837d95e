"""The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then Avro binary.

Keel writes exactly these bytes, so Kafka Connect, ksqlDB, Flink and every
Confluent-compatible client read Keel's topics."""

from __future__ import annotations

import struct

from keel.schemas.errors import DecodeError

MAGIC = 0
_HEADER = struct.Struct(">bI")
HEADER_SIZE = _HEADER.size


def frame(schema_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, schema_id) + payload


def unframe(data: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """(schema id, Avro payload); DecodeError when the bytes are not Confluent-framed."""
    if data is None or len(data) < HEADER_SIZE:
        raise DecodeError(
            f"value of {0 if data is None else len(data)} bytes is too short for the wire format header"
        )
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"unknown magic byte {magic} (expected {MAGIC}: Confluent wire format)")
    return schema_id, memoryview(data)[HEADER_SIZE:]


def schema_id_of(data: bytes) -> int | None:
    """The schema id of well-framed bytes without copying them (a hot-path peek), or None:
    then `unframe` says what is wrong."""
    if type(data) is bytes and len(data) >= HEADER_SIZE and data[0] == MAGIC:
        return int(_HEADER.unpack_from(data)[1])
    return None
