"""The archive sink against the real broker and registry: `keel archive run` processes
reading Keel Avro events published with the producer SDK into a tmp root; killed, restarted,
stopped; `keel archive restore` producing the records back."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keel.connectors.archive import (
    H_ARCHIVE_FILE,
    ArchivedRecord,
    format_hour,
    hour_of,
    list_files,
    read_file,
)
from keel.kafka import TopicSpec, delete_topics, ensure_topics, make_consumer, wait_for_topics
from keel.local.ports import free_port
from keel.schemas.catalog import load_catalog
from keel.schemas.registry.client import RegistryClient
from keel.schemas.serde import AvroSerde
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel

Seen = dict[tuple[int, int], tuple[bytes | None, bytes | None, int]]  # (p, offset) -> k, v, ts


@dataclass
class ArchiveEnv:
    env: dict[str, str]
    prefix: str
    source: str
    group: str
    registry: str
    root: Path
    tmp: Path
    topics: list[str]
    sinks: list[KeelProcess] = field(default_factory=list)

    def start(self, **extra_env: str) -> KeelProcess:
        port = free_port()
        sink = KeelProcess.start(
            [KEEL, "archive", "run"],
            {**self.env, "KEEL_ARCHIVE_HTTP_PORT": str(port), **extra_env},
            self.tmp / f"sink-{len(self.sinks)}.log",
            port=port,
            name="the sink",
        )
        self.sinks.append(sink)
        wait_for(sink.ready, 60, "the sink ready")
        return sink

    def keel(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_keel(*args, env=self.env, timeout=120)

    def send(self, n: int) -> None:
        from keel.producers.sdk import KeelProducer

        with KeelProducer(source="test", registry_url=self.registry, topic_prefix=self.prefix) as p:
            for i in range(n):
                p.send(page(f"u{i % 7}", i))
            results = p.flush(30)
        failed = [r for r in results if not r.ok]
        assert not failed, failed[:3]

    def committed(self, topic: str, partitions: int) -> int:
        consumer = make_consumer(self.group)
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        finally:
            consumer.close()


def page(user: str, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": user,
        "occurred_at": f"2026-11-28T10:00:{n % 60:02d}Z",
        "url": f"https://shop.example/p/{n}",
        "path": f"/p/{n}",
    }


def read_topic(
    topic: str, count: int, partitions: int, headers: dict[tuple[int, int], Any] | None = None
) -> Seen:
    """Every record of `topic` (expecting `count`), by partition and offset; their headers
    into `headers` when given."""
    consumer = make_consumer(f"test-reader-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: Seen = {}

    def more() -> bool:
        for msg in consumer.consume(500, 0.5):
            if msg.error() is None:
                key = (msg.partition() or 0, msg.offset() or 0)
                seen[key] = (msg.key(), msg.value(), msg.timestamp()[1])
                if headers is not None:
                    headers[key] = msg.headers()
        return len(seen) >= count

    try:
        wait_for(more, 60, f"{count} records in {topic}", interval=0)
    finally:
        consumer.close()
    return seen


def archived(root: Path, topic: str) -> list[tuple[Path, ArchivedRecord]]:
    return [(f.path, r) for f in list_files(root, topic) for r in read_file(f.path)]


def tmp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.tmp"))


@pytest.fixture
def arch(
    kafka_bootstrap: str, schema_registry: str, admin: AdminClient, tmp_path: Path
) -> Iterator[ArchiveEnv]:
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    source = f"{prefix}events"  # where the SDK writes with this topic prefix
    ensure_topics(admin, [TopicSpec(source, 3)])
    wait_for_topics(admin, [source])
    group = f"test-archive-{uuid.uuid4().hex[:10]}"
    root = tmp_path / "archive"
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_ARCHIVE_ROOT": str(root),
        "KEEL_ARCHIVE_TOPICS": source,
        "KEEL_ARCHIVE_GROUP": group,
        "KEEL_ARCHIVE_ROLL_RECORDS": "7",
        "KEEL_ARCHIVE_ROLL_AGE_S": "1",
        "KEEL_ARCHIVE_SESSION_TIMEOUT_MS": "6000",
        "KEEL_ARCHIVE_PROGRESS_INTERVAL_S": "1",
    }
    a = ArchiveEnv(env, prefix, source, group, schema_registry, root, tmp_path, [source])
    yield a
    for sink in a.sinks:
        sink.stop_and_show()
    delete_topics(admin, a.topics)


def assert_exactly_once(root: Path, topic: str, kafka: Seen) -> None:
    """Every record of the topic in exactly one file, bytes as Kafka holds them, in the file
    its hour, partition and first offset name."""
    records = archived(root, topic)
    places = [(r.partition, r.offset) for _, r in records]
    assert len(places) == len(set(places)), "a record is in two files"
    assert set(places) == set(kafka), "records missing from the archive"
    by_file: dict[Path, list[ArchivedRecord]] = {}
    for path, r in records:
        by_file.setdefault(path, []).append(r)
        assert (r.key, r.value, r.timestamp) == kafka[(r.partition, r.offset)]
        hour = hour_of(r.timestamp)
        assert path.parent == root / topic / f"dt={hour:%Y-%m-%d}" / f"hour={hour:%H}"
    for path, rs in by_file.items():
        offsets = [r.offset for r in rs]
        assert offsets == sorted(offsets)
        assert path.name == f"{topic}+{rs[0].partition}+{offsets[0]}.jsonl.gz"
        assert {r.partition for r in rs} == {rs[0].partition}


def test_events_land_in_files_by_hour_and_partition_byte_identical(arch: ArchiveEnv) -> None:
    sink = arch.start()
    arch.send(40)
    kafka = read_topic(arch.source, 40, 3)
    wait_for(lambda: arch.committed(arch.source, 3) == 40, 60, "all 40 committed")
    assert sink.stop() == 0
    assert tmp_files(arch.root) == [], "a .tmp left after a clean stop"
    assert_exactly_once(arch.root, arch.source, kafka)
    assert len(list_files(arch.root, arch.source)) >= 6  # rolled at 7 records per file

    # The values are Keel's Confluent-framed Avro, decodable later with the registry.
    serde = AvroSerde(RegistryClient(arch.registry), load_catalog())
    decoded = [serde.decode_plain(r.value or b"") for _, r in archived(arch.root, arch.source)]
    assert {d["type"] for d in decoded} == {"page.viewed"}
    assert {r.key for _, r in archived(arch.root, arch.source)} == {
        f"u{i}".encode() for i in range(7)
    }

    listing = arch.keel("archive", "list", arch.source, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert sum(row["records"] for row in rows) == 40
    first = rows[0]
    assert set(first) >= {"hour", "partition", "first_offset", "last_offset", "records", "bytes"}
    text = arch.keel("archive", "list", arch.source)
    assert text.returncode == 0 and f"{len(rows)} files, 40 records" in text.stdout

    # JSON log lines with periodic progress.
    lines = [json.loads(ln) for ln in sink.log.read_text().splitlines() if ln.startswith("{")]
    assert any("archive:" in str(ln.get("message", ln.get("msg", ""))) for ln in lines)


def test_files_appear_only_when_renamed(arch: ArchiveEnv) -> None:
    sink = arch.start(KEEL_ARCHIVE_ROLL_RECORDS="1000", KEEL_ARCHIVE_ROLL_AGE_S="600")
    arch.send(10)
    wait_for(lambda: tmp_files(arch.root), 60, "a .tmp being written")
    assert list_files(arch.root, arch.source) == []
    assert arch.committed(arch.source, 3) == 0  # nothing committed before the rename
    assert sink.stop() == 0  # a clean stop finishes the open files and commits
    assert tmp_files(arch.root) == []
    assert sum(1 for _ in archived(arch.root, arch.source)) == 10
    assert arch.committed(arch.source, 3) == 10


def test_killed_mid_file_and_restarted_holds_every_record_once(arch: ArchiveEnv) -> None:
    # Files roll at 5 records; a long age keeps the last one of each partition open.
    first = arch.start(KEEL_ARCHIVE_ROLL_RECORDS="5", KEEL_ARCHIVE_ROLL_AGE_S="600")
    arch.send(40)
    kafka = read_topic(arch.source, 40, 3)
    wait_for(lambda: arch.committed(arch.source, 3) >= 20, 60, "some files committed")
    wait_for(lambda: tmp_files(arch.root), 60, "a file mid-way")
    first.kill()
    assert tmp_files(arch.root), "the kill should leave a file mid-way"
    assert arch.committed(arch.source, 3) < 40

    arch.send(20)  # more while it is down
    kafka = read_topic(arch.source, 60, 3)
    second = arch.start()
    wait_for(lambda: arch.committed(arch.source, 3) == 60, 60, "all 60 committed")
    assert second.stop() == 0
    assert tmp_files(arch.root) == []
    assert_exactly_once(arch.root, arch.source, kafka)


def test_a_commit_lost_after_the_rename_does_not_duplicate(arch: ArchiveEnv) -> None:
    sink = arch.start()
    arch.send(30)
    kafka = read_topic(arch.source, 30, 3)
    wait_for(lambda: arch.committed(arch.source, 3) == 30, 60, "all 30 committed")
    assert sink.stop() == 0
    before = {f.path: f.path.read_bytes() for f in list_files(arch.root, arch.source)}
    # As if the sink died between renames and commits: the group back at offset 0.
    consumer = make_consumer(arch.group)
    consumer.commit(
        offsets=[TopicPartition(arch.source, p, 0) for p in range(3)], asynchronous=False
    )
    consumer.close()
    # Different roll points this time: the finished files are recognised, not rewritten.
    again = arch.start(KEEL_ARCHIVE_ROLL_RECORDS="3")
    wait_for(lambda: arch.committed(arch.source, 3) == 30, 60, "30 committed again")
    assert again.stop() == 0
    after = {f.path: f.path.read_bytes() for f in list_files(arch.root, arch.source)}
    assert after == before
    assert_exactly_once(arch.root, arch.source, kafka)


def test_a_second_sink_joining_and_leaving_keeps_every_record_once(arch: ArchiveEnv) -> None:
    first = arch.start(KEEL_ARCHIVE_ROLL_AGE_S="600")
    arch.send(30)
    wait_for(lambda: tmp_files(arch.root), 60, "files being written")
    second = arch.start()  # the rebalance finishes the first sink's open files
    arch.send(30)
    kafka = read_topic(arch.source, 60, 3)
    assert first.stop() == 0  # and again: the second sink takes every partition
    wait_for(lambda: arch.committed(arch.source, 3) >= 30, 60, "the first part committed")
    arch.send(15)
    kafka = read_topic(arch.source, 75, 3)
    wait_for(lambda: arch.committed(arch.source, 3) == 75, 60, "all 75 committed")
    assert second.stop() == 0
    assert tmp_files(arch.root) == []
    assert_exactly_once(arch.root, arch.source, kafka)


def test_restore_produces_exactly_the_range_with_keys_and_values(
    arch: ArchiveEnv, admin: AdminClient
) -> None:
    # Records three, two and one hour old: the source copies SDK-made events with timestamps.
    arch.send(30)
    events = read_topic(arch.source, 30, 3)
    dated = f"{arch.prefix}dated"
    target = f"{arch.prefix}restored"
    arch.topics += [dated, target]
    ensure_topics(admin, [TopicSpec(dated, 2), TopicSpec(target, 2)])
    wait_for_topics(admin, [dated, target])
    now_ms = max(ts for _, _, ts in events.values())
    hour_ms = 3_600_000
    producer = Producer({"bootstrap.servers": arch.env["KEEL_BOOTSTRAP_SERVERS"]})
    for i, (key, value, _) in enumerate(events.values()):
        age = 1 + i % 3  # hours
        producer.produce(dated, key=key, value=value, timestamp=now_ms - age * hour_ms)
    assert producer.flush(30) == 0
    kafka = read_topic(dated, 30, 2)
    sink = arch.start(KEEL_ARCHIVE_TOPICS=dated)
    wait_for(lambda: arch.committed(dated, 2) == 30, 60, "all 30 archived")
    assert sink.stop() == 0

    oldest, middle = hour_of(now_ms - 3 * hour_ms), hour_of(now_ms - 2 * hour_ms)
    wanted = {k: v for k, v in kafka.items() if hour_of(v[2]) in (oldest, middle)}
    assert 0 < len(wanted) < 30
    run = arch.keel(
        "archive", "restore", dated, "--to", target,
        "--from", format_hour(oldest), "--until", format_hour(middle),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    files = list_files(arch.root, dated, oldest, middle)
    assert f"restored {len(wanted)} records from {len(files)} files to {target}" in run.stdout
    assert run.stdout.count(f"/{len(files)}] ") == len(files)  # progress, each file once

    headers: dict[tuple[int, int], Any] = {}
    restored = read_topic(target, len(wanted), 2, headers)
    assert sorted((k, v) for k, v, _ in restored.values()) == sorted(
        (k, v) for k, v, _ in wanted.values()
    )
    names = {dict(h)[H_ARCHIVE_FILE].decode() for h in headers.values()}
    assert names == {str(f.path.relative_to(arch.root)) for f in files}
    serde = AvroSerde(RegistryClient(arch.registry), load_catalog())
    assert all(
        serde.decode_plain(v or b"")["type"] == "page.viewed" for _, v, _ in restored.values()
    )
    # Nothing outside the range: the target holds exactly as many records (the command
    # returned after the broker acknowledged them all).
    consumer = make_consumer(f"test-marks-{uuid.uuid4().hex[:8]}")
    try:
        marks = [consumer.get_watermark_offsets(TopicPartition(target, p), 10) for p in (0, 1)]
    finally:
        consumer.close()
    assert sum(high - low for low, high in marks) == len(wanted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["archive", "restore", "t"], "--to: the target topic is required"),
        (["archive", "restore", "t", "--to", "x", "--from", "2026-11-28"], "--from '2026-11-28'"),
        (["archive", "restore", "t", "--to", "x", "--until", "soon"], "--until 'soon'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: Sequence[str], message: str) -> None:
    run = run_keel(*args)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def test_restore_of_nothing_or_to_a_missing_topic_is_one_line(arch: ArchiveEnv) -> None:
    run = arch.keel("archive", "restore", "no-such-topic", "--to", arch.source)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "no archive files of topic 'no-such-topic'" in run.stderr

    sink = arch.start()
    arch.send(5)
    wait_for(lambda: arch.committed(arch.source, 3) == 5, 60, "all 5 committed")
    assert sink.stop() == 0
    missing = f"{arch.prefix}missing"
    run = arch.keel("archive", "restore", arch.source, "--to", missing)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and f"target topic '{missing}' does not exist" in run.stderr


def test_unwritable_root_and_unreachable_broker_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "KEEL_ARCHIVE_ROOT": str(blocker / "archive")}
    run = subprocess.run(
        [KEEL, "archive", "run"], env=env, check=False, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "archive root" in run.stderr, run.stderr

    env = {
        **os.environ,
        "KEEL_ARCHIVE_ROOT": str(tmp_path / "ok"),
        "KEEL_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    run = subprocess.run(
        [KEEL, "archive", "run"], env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "Kafka at 127.0.0.1:" in run.stderr, run.stderr
