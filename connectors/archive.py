"""The archive sink: Kafka records written unchanged to files by topic, hour and partition,
for retention beyond Kafka's and for backfills; and `restore`, the way back.

Responsible for:
- the layout, pure: `<root>/<topic>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first
  offset>.jsonl.gz`, the hour taken from the record's Kafka timestamp in UTC
  (`archive_path`, `parse_path`, `hour_of`, `parse_hour`);
- the file format, pure (`encode_record`, `decode_line`, `read_file`);
- when a file is closed (`RollPolicy`: compressed size, record count, age; and at every
  change of hour within a partition);
- the sink (`ArchiveSink`): one consumer group (read_committed, manual commits) on the
  archived topics, one open file per assigned partition;
- `restore`: archived records of a topic and hour range produced to a target topic.

File format: gzip-compressed JSON Lines, one object per record: `topic`, `partition`,
`offset`, `timestamp` (ms), `key` and `value` (base64 of the exact bytes, or null) and
`headers` (`[[name, base64 or null], ...]`). The value is the Confluent-framed Avro record
exactly as the producer wrote it (magic byte, schema id, Avro body): nothing is decoded or
re-encoded, so nothing is lost in translation and any Confluent-compatible reader decodes
it later with the registry. JSON Lines over a home-made binary framing because every tool
of a data team reads it without Keel (`zcat | jq`, DuckDB's and Spark's JSON readers take
`.gz` as is) and it carries the metadata next to the bytes; base64 costs a third more
before compression, which gzip mostly wins back. gzip because it is in the standard
library and in every reader (no zstd library is a Keel dependency).

Exactly-once files: records go to `<name>.tmp`; a file is closed by gzip's trailer, flush,
fsync, an atomic rename to `<name>`, an fsync of the directory, and only THEN the offset
past its last record is committed. A crash before the rename leaves a `.tmp` that is never
listed nor restored, and is overwritten (or deleted when its partition is assigned again);
its records are read again from the committed offset. A crash between the rename and the
commit leaves a complete file whose name is the committed offset: the restarted sink sees
that the file it would open already exists, reads its last offset, skips the records the
file holds and commits past them, so no record is in two files and none is missing,
whatever the roll points of the two runs.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import glob
import gzip
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message, TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
)

from keel.errors import KeelError
from keel.health import HealthServer, check, loop_server
from keel.kafka import (
    SILENT_LOG,
    kafka_call,
    make_admin,
    make_producer,
    naming_brokers,
)
from keel.metrics import ConsumerMetrics, total
from keel.runtime import CommitRunner, CommittingSink, RunnerConfig
from keel.settings import KeelSettings

log = logging.getLogger(__name__)

EXT = ".jsonl.gz"
TMP_SUFFIX = ".tmp"
H_ARCHIVE_FILE = "keel.archive.file"  # restore: the archive file a record came from
_FILE_RE = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<offset>\d+)\.jsonl\.gz$"
)
_HOUR_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2})(?::00(?::00)?)?Z?$")
HOUR_FORMAT = "YYYY-MM-DDTHH"
_GZIP_LEVEL = 6  # zlib's default: the usual size/speed balance
_CHUNK_BYTES = 256 * 1024
HOUR_MS = 3_600_000


class ArchiveError(KeelError):
    """Root of the archive sink's errors; its message is one line for the user."""


# -- layout (pure) ------------------------------------------------------------------------


def hour_of(timestamp_ms: int) -> datetime:
    """The UTC hour a Kafka timestamp falls in."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def parse_hour(text: str, option: str = "hour") -> datetime:
    """`2026-11-28T14` (also `2026-11-28 14`, `2026-11-28T14:00`, a trailing `Z`), UTC."""
    match = _HOUR_RE.match(text.strip())
    if match is None:
        raise ArchiveError(
            f"{option} {text!r}: expected an hour as {HOUR_FORMAT} (UTC), e.g. 2026-11-28T14"
        )
    year, month, day, hour = (int(g) for g in match.groups())
    try:
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError as exc:
        raise ArchiveError(f"{option} {text!r}: not a real hour ({exc})") from None


def format_hour(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%dT%H")


def file_name(topic: str, partition: int, first_offset: int) -> str:
    return f"{topic}+{partition}+{first_offset}{EXT}"


def hour_dir(topic: str, hour: datetime) -> Path:
    return Path(topic) / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"


def archive_path(root: Path, topic: str, partition: int, hour: datetime, first: int) -> Path:
    return root / hour_dir(topic, hour) / file_name(topic, partition, first)


@dataclass(frozen=True)
class ArchiveFile:
    """A finished archive file, from its path alone."""

    path: Path
    topic: str
    partition: int
    first_offset: int
    hour: datetime


def parse_path(path: Path) -> ArchiveFile | None:
    """The file's topic, partition, first offset and hour; None for anything else (a
    `.tmp`, a stray file)."""
    match = _FILE_RE.match(path.name)
    hour_part, day_part = path.parent.name, path.parent.parent.name
    if match is None or not hour_part.startswith("hour=") or not day_part.startswith("dt="):
        return None
    try:
        hour = datetime.strptime(f"{day_part[3:]}T{hour_part[5:]}", "%Y-%m-%dT%H")
    except ValueError:
        return None
    return ArchiveFile(
        path,
        match["topic"],
        int(match["partition"]),
        int(match["offset"]),
        hour.replace(tzinfo=UTC),
    )


def list_files(
    root: Path,
    topic: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ArchiveFile]:
    """Finished files (never `.tmp`), by topic, hour, partition and offset; `since` and
    `until` are hours, both included."""
    pattern = f"{glob.escape(topic) if topic else '*'}/dt=*/hour=*/*{EXT}"
    found = []
    for path in root.glob(pattern):
        parsed = parse_path(path)
        if parsed is None or (topic and parsed.topic != topic):
            continue
        if (since and parsed.hour < since) or (until and parsed.hour > until):
            continue
        found.append(parsed)
    found.sort(key=lambda f: (f.topic, f.hour, f.partition, f.first_offset))
    return found


# -- records (pure) -----------------------------------------------------------------------

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


# -- rolling (pure) -----------------------------------------------------------------------


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


def check_root(root: Path) -> None:
    """The root exists (made if needed) and takes a file, or one ArchiveError saying why."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            reason = f"not writable ({reason})"
        raise ArchiveError(f"archive root {root}: {reason}") from None


def archive_root(settings: KeelSettings, given: Path | None = None) -> Path:
    return Path(given or settings.archive_root or settings.home / "archive")


def archive_topics(settings: KeelSettings) -> list[str]:
    topics = [t.strip() for t in settings.archive_topics.split(",") if t.strip()]
    if not topics:
        raise ArchiveError("KEEL_ARCHIVE_TOPICS names no topic")
    return topics


def check_brokers(settings: KeelSettings, timeout: float = 10.0) -> set[str]:
    """The topics the cluster knows, or one KafkaEdgeError naming the brokers."""
    admin = make_admin(settings, logger=SILENT_LOG)
    with naming_brokers(settings), kafka_call("listing topics", timeout):
        return set(admin.list_topics(timeout=timeout).topics)


# -- the sink -----------------------------------------------------------------------------


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # keel_consumer_*{component="archive"}: processed counts records in finished files;
        # skipped{reason="archived"} those already in a file finished before a crash.
        self.consumer = ConsumerMetrics("archive", r)
        self.files = Counter(
            "keel_archive_files",
            "Files finished (renamed, then committed).",
            ["reason"],
            registry=r,
        )
        self.bytes = Counter(
            "keel_archive_bytes", "Compressed bytes in finished files.", registry=r
        )
        self.open_files = Gauge("keel_archive_open_files", "Files being written.", registry=r)


class ArchiveSink(CommittingSink):
    """The sink (see the module docstring), on keel.runtime's loop as a sink that decides
    its own commit points: after a file's rename. `run(stop)` on one thread until `stop`
    is set; the rebalance hooks run inside `consume`, on that thread too."""

    component = "archive"

    def __init__(
        self, settings: KeelSettings, *, root: Path | None = None, batch_size: int = 1000
    ) -> None:
        self.settings = settings
        self.root = archive_root(settings, root)
        self.topics = archive_topics(settings)
        self.policy = RollPolicy.of(settings)
        self.batch_size = batch_size
        self.metrics = SinkMetrics()
        self.open: dict[tuple[str, int], OpenFile] = {}
        self.skip_until: dict[tuple[str, int], int] = {}
        self.counts = self.metrics.consumer  # what the progress log and /metrics report
        config = RunnerConfig(
            group=settings.archive_group,
            topics=self.topics,
            batch_size=batch_size,
            session_timeout_ms=settings.archive_session_timeout_ms,
            progress_interval_s=settings.archive_progress_interval_s,
        )
        self.runner = CommitRunner(self, settings, config, self.counts)

    @property
    def heartbeat(self) -> float:
        return self.runner.heartbeat

    @property
    def assigned(self) -> set[tuple[str, int]]:
        return self.runner._assigned

    def check(self) -> None:
        """An unwritable root or unreachable brokers end here, in one line."""
        check_root(self.root)
        known = check_brokers(self.settings)
        missing = [t for t in self.topics if t not in known]
        if missing:
            log.warning("topics not there yet (read once they are): %s", ", ".join(missing))

    def run(self, stop: threading.Event) -> None:
        log.info(
            "archive sink reading %s as group %s into %s",
            ",".join(self.topics),
            self.settings.archive_group,
            self.root,
        )
        self.runner.run(stop)

    # -- records --------------------------------------------------------------------------
    def take(self, msg: Message) -> None:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        key = (topic, partition)
        if offset <= self.skip_until.get(key, -1):
            self.counts.skipped["archived"] += 1
            return
        kind, timestamp = msg.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE:
            timestamp = -1
        # The hour as an integer: a datetime only when a file is opened (hot path).
        bucket = (timestamp if timestamp >= 0 else int(time.time() * 1000)) // HOUR_MS
        current = self.open.get(key)
        if current is not None and current.bucket != bucket:
            self._finish(current, "hour")
            current = None
        if current is None:
            if key not in self.assigned:
                return  # fetched before a revoke: its new owner writes it
            hour = hour_of(bucket * HOUR_MS)
            if self._already_archived(topic, partition, hour, offset):
                return
            current = self.open[key] = OpenFile(self.root, topic, partition, hour, offset)
            self.metrics.open_files.set(len(self.open))
        headers = _headers(msg) if msg.headers() else None
        line = encode_fields(topic, partition, offset, timestamp, msg.key(), msg.value(), headers)
        current.write(line, offset)
        self.counts.in_flight += 1
        reason = self.policy.reason(current.size, current.records, 0.0)
        if reason is not None:
            self._finish(current, reason)

    def _already_archived(self, topic: str, partition: int, hour: datetime, offset: int) -> bool:
        """A finished file starting at this offset exists: a crash came between its rename
        and its commit. Skip what it holds and commit past it, instead of writing it again."""
        path = archive_path(self.root, topic, partition, hour, offset)
        if not path.exists():
            return False
        stats = file_stats(path)
        if stats.first_offset != offset:  # not ours to trust: write the records again
            log.warning("%s does not start at offset %d; rewriting it", path, offset)
            return False
        self.skip_until[(topic, partition)] = stats.last_offset
        self.counts.skipped["archived"] += 1
        self._commit(topic, partition, stats.last_offset + 1)
        log.info(
            "%s already finished before a restart (offsets %d-%d); committed past it",
            path.name,
            stats.first_offset,
            stats.last_offset,
        )
        return True

    def tick(self) -> None:
        """Finish the files that aged past the roll policy."""
        now = time.monotonic()
        for current in list(self.open.values()):
            reason = self.policy.reason(current.size, current.records, now - current.opened)
            if reason is not None:
                self._finish(current, reason)

    def _finish(self, current: OpenFile, reason: str) -> None:
        """Durable file first, then the commit (see the module docstring)."""
        self.open.pop((current.topic, current.partition), None)
        self.metrics.open_files.set(len(self.open))
        current.finish()
        size = current.size
        self.counts.processed += current.records
        self.counts.in_flight -= current.records
        self.metrics.files.labels(reason).inc()
        self.metrics.bytes.inc(size)
        log.info(
            "finished %s: %d records, offsets %d-%d, %d bytes (%s)",
            current.path.relative_to(self.root),
            current.records,
            current.first,
            current.last,
            size,
            reason,
        )
        self._commit(current.topic, current.partition, current.last + 1)

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        # A failed commit is harmless: the file is durable; a restart finds it
        # (_already_archived) and commits past it.
        self.runner.commit([TopicPartition(topic, partition, offset)])

    # -- rebalances (the runner's hooks) ----------------------------------------------
    def on_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.skip_until.pop((tp.topic, tp.partition), None)
            # A crashed owner's `.tmp`: its records are read again from the committed offset.
            prefix = glob.escape(f"{tp.topic}+{tp.partition}+")
            pattern = f"{glob.escape(tp.topic)}/dt=*/hour=*/{prefix}*{EXT}{TMP_SUFFIX}"
            for leftover in self.root.glob(pattern):
                if (tp.topic, tp.partition) not in self.open:
                    leftover.unlink(missing_ok=True)
                    log.info("discarded %s left by a crash", leftover.name)

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Finish and commit before another member takes the partitions over.
        for tp in partitions:
            current = self.open.get((tp.topic, tp.partition))
            if current is not None:
                self._finish(current, "revoked")
            self.skip_until.pop((tp.topic, tp.partition), None)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        # Another member may be writing these already: our part is discarded, not renamed.
        for tp in partitions:
            current = self.open.pop((tp.topic, tp.partition), None)
            if current is not None:
                current.discard()
                self.counts.in_flight -= current.records

    # -- shutdown, progress -------------------------------------------------------------
    def stop(self) -> None:
        for current in list(self.open.values()):
            try:
                self._finish(current, "stop")
            except OSError as exc:
                log.error("could not finish %s: %s", current.tmp, exc)
                current.discard()
                self.counts.in_flight -= current.records

    def progress(self) -> dict[str, Any]:
        files, size = total(self.metrics.files), total(self.metrics.bytes)
        return {"files": files, "bytes": size, "open": len(self.open)}


def health_server(sink: ArchiveSink, port: int) -> HealthServer:
    """`/healthz` (the loop beats), `/readyz` (joined the group), `/metrics`."""
    try:
        return loop_server(
            "archive",
            port,
            registry=sink.metrics.registry,
            heartbeat=lambda: sink.heartbeat,
            stale_after=60.0 + sink.settings.archive_session_timeout_ms / 1000,
            ready=lambda: {"group": check(sink.runner.ready, group=sink.settings.archive_group)},
        )
    except OSError as exc:
        raise ArchiveError(f"KEEL_ARCHIVE_HTTP_PORT {port}: {exc.strerror}") from None


# -- restore ------------------------------------------------------------------------------


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
