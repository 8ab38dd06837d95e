"""`restore`: archived records of a topic and hour range produced to a target topic."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from keel.connectors.archive.fileformat import file_stats, read_file
from keel.connectors.archive.layout import ArchiveError, ArchiveFile, format_hour, list_files
from keel.connectors.archive.sink import check_brokers
from keel.kafka import (
    SILENT_LOG,
    make_producer,
)
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

H_ARCHIVE_FILE = "keel.archive.file"  # restore: the archive file a record came from


@dataclass(frozen=True)
class RestoreResult:
    files: int
    records: int


def restore(
    settings: KeelSettings,
    root: Path,
    topic: str,
    target: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[int, int, ArchiveFile, int], None] | None = None,
    timeout: float = 60.0,
) -> RestoreResult:
    """Produce the archived records of `topic` in the hour range to `target`, keys, values
    and headers as they were, plus `keel.archive.file` naming the file. Each file once, a
    partition's files in offset order (so one key's records keep their order)."""
    if since and until and since > until:
        raise ArchiveError(f"--from {format_hour(since)} is after --until {format_hour(until)}")
    files = list_files(root, topic, since, until)
    if not files:
        span = f" from {format_hour(since)}" if since else ""
        span += f" until {format_hour(until)}" if until else ""
        raise ArchiveError(f"no archive files of topic {topic!r}{span} under {root}")
    known = check_brokers(settings)
    if target not in known:
        raise ArchiveError(f"target topic {target!r} does not exist (create it first)")
    files.sort(key=lambda f: (f.partition, f.first_offset))
    producer = make_producer(settings, logger=SILENT_LOG)
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None and len(failures) < 5:
            failures.append(err.str())

    total = 0
    for index, archived in enumerate(files, 1):
        name = str(archived.path.relative_to(root))
        count = 0
        for record in read_file(archived.path):
            headers: list[tuple[str, str | bytes | None]] = [
                *record.headers,
                (H_ARCHIVE_FILE, name.encode()),
            ]
            while True:
                try:
                    producer.produce(
                        target,
                        key=record.key,
                        value=record.value,
                        headers=headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.5)
            producer.poll(0)
            count += 1
        total += count
        if progress is not None:
            progress(index, len(files), archived, count)
    left = producer.flush(timeout)
    if left:
        raise ArchiveError(f"{left} records to {target!r} not acknowledged within {timeout:g}s")
    if failures:
        raise ArchiveError(f"records to {target!r} not written: {failures[0]}")
    return RestoreResult(len(files), total)


def describe(files: Iterable[ArchiveFile], root: Path) -> list[dict[str, Any]]:
    """What `keel archive list` shows, one dict per file."""
    rows = []
    for f in files:
        stats = file_stats(f.path)
        rows.append(
            {
                "path": str(f.path.relative_to(root)),
                "topic": f.topic,
                "hour": format_hour(f.hour),
                "partition": f.partition,
                "first_offset": stats.first_offset,
                "last_offset": stats.last_offset,
                "records": stats.records,
                "bytes": stats.size,
            }
        )
    return rows
