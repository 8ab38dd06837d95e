"""The file format, pure: gzip-compressed JSON Lines, one object per record
(`encode_record`, `decode_line`, `read_file`), and a closed file's figures kept beside it
(`file_stats`). See the package docstring for why this format."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Message

from keel.connectors.archive.layout import TMP_SUFFIX

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class ArchivedRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch (Kafka's), -1 when the record had none
    key: bytes | None
    value: bytes | None
    headers: Headers


def _headers(msg: Message) -> Headers:
    """A record's headers as (name, bytes) pairs, in order (names may repeat)."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text, validate=True)


def encode_record(record: ArchivedRecord) -> bytes:
    """One JSON line (with its newline)."""
    return encode_fields(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        record.headers,
    )


def encode_fields(  # noqa: PLR0917 (positional on purpose: called per record)
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
) -> bytes:
    """`encode_record` without building the record first (the sink's hot path)."""
    return orjson.dumps(
        {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
            "key": None if key is None else base64.b64encode(key).decode("ascii"),
            "value": None if value is None else base64.b64encode(value).decode("ascii"),
            "headers": [[name, _b64(v)] for name, v in headers] if headers else [],
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def decode_line(line: bytes) -> ArchivedRecord:
    raw = orjson.loads(line)
    return ArchivedRecord(
        raw["topic"],
        int(raw["partition"]),
        int(raw["offset"]),
        int(raw["timestamp"]),
        _unb64(raw["key"]),
        _unb64(raw["value"]),
        [(str(name), _unb64(value)) for name, value in raw.get("headers") or []],
    )


def read_file(path: Path) -> Iterator[ArchivedRecord]:
    with gzip.open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield decode_line(line)


@dataclass(frozen=True)
class FileStats:
    records: int
    first_offset: int
    last_offset: int
    size: int


STATS_SUFFIX = ".stats"


def stats_path(path: Path) -> Path:
    return path.with_name(path.name + STATS_SUFFIX)


def write_stats(path: Path, stats: FileStats) -> None:
    """The file's figures beside it, so `keel archive list` need not read it through. A
    cache, not a record: written after the file is durable, without fsync; a missing or
    stale one (its size is not the file's) sends `file_stats` back to the file itself."""
    target = stats_path(path)
    tmp = target.with_name(target.name + TMP_SUFFIX)
    tmp.write_bytes(orjson.dumps(dataclasses.asdict(stats)))
    os.replace(tmp, target)


def _cached_stats(path: Path, size: int) -> FileStats | None:
    try:
        raw = orjson.loads(stats_path(path).read_bytes())
        stats = FileStats(*(int(raw[f.name]) for f in dataclasses.fields(FileStats)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stats if stats.size == size else None


def file_stats(path: Path) -> FileStats:
    """From the figures written beside the file when they match it, else by reading it
    through (names carry only the first offset)."""
    size = path.stat().st_size
    cached = _cached_stats(path, size)
    if cached is not None:
        return cached
    count, first, last = 0, -1, -1
    for record in read_file(path):
        if count == 0:
            first = record.offset
        last = record.offset
        count += 1
    return FileStats(count, first, last, size)
