"""The sink (`ArchiveSink`), a `keel.runtime.CommittingSink`: one consumer group
(read_committed, manual commits) on the archived topics, one open file per assigned
partition; the offset past a file's last record is committed only after its rename."""

from __future__ import annotations

import errno
import glob
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message, TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
)

from keel.connectors.archive.fileformat import _headers, encode_fields, file_stats
from keel.connectors.archive.layout import (
    EXT,
    HOUR_MS,
    TMP_SUFFIX,
    ArchiveError,
    archive_path,
    hour_of,
)
from keel.connectors.archive.writer import OpenFile, RollPolicy
from keel.health import HealthServer, check, loop_server
from keel.kafka import (
    SILENT_LOG,
    kafka_call,
    make_admin,
    naming_brokers,
)
from keel.metrics import ConsumerMetrics, total
from keel.runtime import CommitRunner, CommittingSink, RunnerConfig
from keel.settings import KeelSettings

log = logging.getLogger(__name__)


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
