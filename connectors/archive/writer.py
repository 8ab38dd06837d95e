"""Writing a file: when it is closed (`RollPolicy`, pure) and the open file itself
(`OpenFile`: `.tmp`, gzip's trailer, flush, fsync, atomic rename, fsync of the directory)."""

from __future__ import annotations

import gzip
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from keel.connectors.archive.fileformat import FileStats, stats_path, write_stats
from keel.connectors.archive.layout import HOUR_MS, TMP_SUFFIX, archive_path
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

_GZIP_LEVEL = 6  # zlib's default: the usual size/speed balance
_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class RollPolicy:
    """When an open file is closed: past `max_bytes` compressed, at `max_records`, or
    `max_age_s` after it was opened (so a quiet partition's records still become durable
    and committed)."""

    max_bytes: int = 64 * 1024 * 1024
    max_records: int = 100_000
    max_age_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_records < 1 or self.max_age_s <= 0:
            raise ValueError("max_bytes and max_records must be >= 1, max_age_s > 0")

    def reason(self, size: int, records: int, age_s: float) -> str | None:
        """Why the file is due now ("size", "records", "age"), or None."""
        if size >= self.max_bytes:
            return "size"
        if records >= self.max_records:
            return "records"
        if age_s >= self.max_age_s:
            return "age"
        return None

    @classmethod
    def of(cls, settings: KeelSettings) -> RollPolicy:
        return cls(
            settings.archive_roll_bytes, settings.archive_roll_records, settings.archive_roll_age_s
        )


# -- writing ------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OpenFile:
    """The file being written for one partition: `<name>.tmp` until `finish()`."""

    def __init__(self, root: Path, topic: str, partition: int, hour: datetime, first: int) -> None:
        self.topic, self.partition, self.hour, self.first = topic, partition, hour, first
        self.path = archive_path(root, topic, partition, hour, first)
        self.tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.bucket = int(hour.timestamp()) * 1000 // HOUR_MS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._chunk: list[bytes] = []
        self._chunk_bytes = 0
        # "wb" truncates a `.tmp` a crashed run left under this name.
        self._raw: IO[bytes] = open(self.tmp, "wb")  # noqa: SIM115 (closed by finish/discard)
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0)
        self.opened = time.monotonic()
        self.size = 0  # compressed bytes in the file: per chunk, then the whole once finished
        self.records = 0
        self.last = first - 1

    def write(self, line: bytes, offset: int) -> None:
        # Lines are handed to gzip in chunks: one zlib call per line costs more than the
        # JSON encoding of it.
        self._chunk.append(line)
        self._chunk_bytes += len(line)
        self.records += 1
        self.last = offset
        if self._chunk_bytes >= _CHUNK_BYTES:
            self._flush_chunk()

    def _flush_chunk(self) -> None:
        if self._chunk:
            self._gz.write(b"".join(self._chunk))
            self._chunk.clear()
            self._chunk_bytes = 0
            self.size = self._raw.tell()

    def finish(self) -> None:
        self._flush_chunk()
        self._gz.close()  # writes the trailer; leaves the raw file open
        self._raw.flush()
        self.size = self._raw.tell()  # the finished file's size: no stat() after the rename
        os.fsync(self._raw.fileno())
        self._raw.close()
        # A file rewritten under its old name must not meet the old file's figures.
        stats_path(self.path).unlink(missing_ok=True)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        if self.records:
            stats = FileStats(self.records, self.first, self.last, self.size)
            try:
                write_stats(self.path, stats)
            except OSError as exc:  # only `list` is slower without it
                log.warning("could not write %s: %s", stats_path(self.path).name, exc)

    def discard(self) -> None:
        try:
            self._gz.close()
            self._raw.close()
        finally:
            self.tmp.unlink(missing_ok=True)
