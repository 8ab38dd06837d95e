"""The archive sink's pure parts: layout, hour bucketing, the file format, roll decisions,
and an OpenFile's rename-only-when-finished contract on a real directory."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keel.connectors.archive import (
    ArchivedRecord,
    ArchiveError,
    FileStats,
    OpenFile,
    RollPolicy,
    archive_path,
    check_root,
    decode_line,
    encode_record,
    file_name,
    file_stats,
    hour_of,
    list_files,
    parse_hour,
    parse_path,
    read_file,
    stats_path,
)

H14 = datetime(2026, 11, 28, 14, tzinfo=UTC)


def test_hour_of_buckets_by_utc_hour() -> None:
    start = int(H14.timestamp() * 1000)
    assert hour_of(start) == H14
    assert hour_of(start + 3_599_999) == H14
    assert hour_of(start + 3_600_000) == datetime(2026, 11, 28, 15, tzinfo=UTC)
    assert hour_of(start - 1) == datetime(2026, 11, 28, 13, tzinfo=UTC)
    # Midnight rolls the day as well.
    midnight = int(datetime(2026, 11, 29, tzinfo=UTC).timestamp() * 1000)
    assert hour_of(midnight - 1) == datetime(2026, 11, 28, 23, tzinfo=UTC)


def test_names_carry_topic_partition_first_offset_under_day_and_hour() -> None:
    path = archive_path(Path("/a"), "shop.events", 3, H14, 1200)
    assert path == Path("/a/shop.events/dt=2026-11-28/hour=14/shop.events+3+1200.jsonl.gz")
    assert file_name("t", 0, 0) == "t+0+0.jsonl.gz"
    parsed = parse_path(path)
    assert parsed is not None
    assert (parsed.topic, parsed.partition, parsed.first_offset, parsed.hour) == (
        "shop.events",
        3,
        1200,
        H14,
    )
    assert parse_path(path.with_name(path.name + ".tmp")) is None
    assert parse_path(Path("/a/t/dt=2026-11-28/hour=99/t+0+0.jsonl.gz")) is None
    assert parse_path(Path("/a/t/x/t+0+0.jsonl.gz")) is None


@pytest.mark.parametrize(
    "text", ["2026-11-28T14", "2026-11-28 14", "2026-11-28T14:00", "2026-11-28T14:00:00Z"]
)
def test_parse_hour_accepts_an_hour(text: str) -> None:
    assert parse_hour(text) == H14


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("2026-11-28", "expected an hour as YYYY-MM-DDTHH"),
        ("2026-11-28T14:30", "expected an hour as YYYY-MM-DDTHH"),
        ("yesterday", "expected an hour as YYYY-MM-DDTHH"),
        ("2026-02-30T01", "not a real hour"),
        ("2026-11-28T24", "not a real hour"),
    ],
)
def test_parse_hour_names_the_option_and_the_rule(text: str, rule: str) -> None:
    with pytest.raises(ArchiveError) as err:
        parse_hour(text, "--from")
    assert str(err.value).startswith(f"--from {text!r}")
    assert rule in str(err.value)


def test_framing_round_trips_exact_bytes() -> None:
    record = ArchivedRecord(
        "events",
        2,
        41,
        1_764_338_400_123,
        b"user-1",
        b"\x00\x00\x00\x00\x07\xff\x00\n binary \xc3",
        [("a", b"1"), ("a", b"\x00\xff"), ("none", None)],
    )
    line = encode_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line) == record
    tombstone = ArchivedRecord("events", 0, 0, -1, None, None, [])
    assert decode_line(encode_record(tombstone)) == tombstone


@pytest.mark.parametrize(
    ("size", "records", "age", "reason"),
    [
        (0, 0, 0.0, None),
        (999, 9, 9.9, None),
        (1000, 1, 0.0, "size"),
        (10, 10, 0.0, "records"),
        (10, 1, 10.0, "age"),
        (5000, 50, 50.0, "size"),  # several due: size is named first
    ],
)
def test_roll_policy(size: int, records: int, age: float, reason: str | None) -> None:
    policy = RollPolicy(max_bytes=1000, max_records=10, max_age_s=10.0)
    assert policy.reason(size, records, age) == reason


def test_roll_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        RollPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="max_age_s"):
        RollPolicy(max_age_s=0)


def test_an_open_file_is_visible_only_once_finished(tmp_path: Path) -> None:
    records = [ArchivedRecord("t", 1, o, 0, b"k", bytes([o]), []) for o in range(5, 9)]
    f = OpenFile(tmp_path, "t", 1, H14, 5)
    for r in records:
        f.write(encode_record(r), r.offset)
    assert f.tmp.exists() and not f.path.exists()
    assert list_files(tmp_path) == []
    f.finish()
    assert f.path.exists() and not f.tmp.exists()
    assert list(read_file(f.path)) == records
    stats = file_stats(f.path)
    assert (stats.records, stats.first_offset, stats.last_offset) == (4, 5, 8)
    assert stats.size == f.path.stat().st_size
    with gzip.open(f.path) as raw:  # plain gzip JSON Lines: any tool reads it
        assert len(raw.read().splitlines()) == 4
    [listed] = list_files(tmp_path, "t")
    assert listed.path == f.path


def test_a_discarded_file_leaves_nothing(tmp_path: Path) -> None:
    f = OpenFile(tmp_path, "t", 0, H14, 0)
    f.write(encode_record(ArchivedRecord("t", 0, 0, 0, None, b"v", [])), 0)
    f.discard()
    assert not f.tmp.exists() and not f.path.exists()


def test_list_files_filters_topic_and_hour_range(tmp_path: Path) -> None:
    for hour in (13, 14, 15):
        for topic in ("a", "b"):
            f = OpenFile(tmp_path, topic, 0, H14.replace(hour=hour), hour * 10)
            f.finish()
    hours = [f.hour.hour for f in list_files(tmp_path, "a", H14, H14.replace(hour=15))]
    assert hours == [14, 15]
    assert {f.topic for f in list_files(tmp_path)} == {"a", "b"}
    assert len(list_files(tmp_path, until=H14)) == 4


def test_check_root_names_the_root_and_the_reason(tmp_path: Path) -> None:
    check_root(tmp_path / "new" / "archive")  # made when missing
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArchiveError, match=r"archive root .*/file/archive: Not a directory"):
        check_root(blocker / "archive")


def test_size_counts_compressed_bytes_as_chunks_reach_the_file(tmp_path: Path) -> None:
    f = OpenFile(tmp_path, "t", 0, H14, 0)
    line = encode_record(ArchivedRecord("t", 0, 0, 0, None, bytes(range(256)) * 4, []))
    for offset in range(100):
        f.write(line, offset)
    assert f.size == 0  # still in the first chunk
    for offset in range(100, 400):
        f.write(line, offset)
    assert 0 < f.size < 400 * len(line)  # a chunk was compressed into the file
    f.finish()
    assert file_stats(f.path).records == 400


def _finished(tmp_path: Path, offsets: range) -> OpenFile:
    f = OpenFile(tmp_path, "t", 2, H14, offsets[0])
    for o in offsets:
        f.write(encode_record(ArchivedRecord("t", 2, o, 0, b"k", b"v", [])), o)
    f.finish()
    return f


def test_a_finished_file_has_its_figures_beside_it_and_list_uses_them(tmp_path: Path) -> None:
    f = _finished(tmp_path, range(10, 20))
    read_through = (10, 10, 19)
    cached = file_stats(f.path)
    assert (cached.records, cached.first_offset, cached.last_offset) == read_through
    assert cached.size == f.path.stat().st_size
    # Proof the figures come from beside the file: a sidecar that matches the file's size
    # but claims other figures is believed (so list never reads the file through).
    stats_path(f.path).write_text(
        json.dumps({"records": 99, "first_offset": 1, "last_offset": 99, "size": cached.size})
    )
    assert file_stats(f.path) == FileStats(99, 1, 99, cached.size)
    assert not list(tmp_path.rglob("*.tmp"))
    assert [x.path for x in list_files(tmp_path)] == [f.path]  # the sidecar is not a file


@pytest.mark.parametrize(
    "sidecar",
    [None, "", "{not json", '{"records": 3}', '{"records": 1, "first_offset": 10, '
     '"last_offset": 19, "size": 1}'],
    ids=["missing", "empty", "corrupt", "incomplete", "stale size"],
)  # fmt: skip
def test_a_missing_or_untrustworthy_sidecar_falls_back_to_reading(
    tmp_path: Path, sidecar: str | None
) -> None:
    f = _finished(tmp_path, range(10, 20))
    if sidecar is None:
        stats_path(f.path).unlink()
    else:
        stats_path(f.path).write_text(sidecar)
    stats = file_stats(f.path)
    assert (stats.records, stats.first_offset, stats.last_offset) == (10, 10, 19)


def test_a_file_rewritten_under_its_name_never_meets_the_old_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the rename and the new figures (write_stats failing here) must leave
    no figures rather than the old file's, even ones that happen to match the new size."""
    new_size = _finished(tmp_path / "elsewhere", range(10, 11)).path.stat().st_size
    old = _finished(tmp_path, range(10, 20))
    stats_path(old.path).write_text(
        json.dumps({"records": 10, "first_offset": 10, "last_offset": 19, "size": new_size})
    )

    def crash(_path: Path, _stats: FileStats) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("keel.connectors.archive.writer.write_stats", crash)
    _finished(tmp_path, range(10, 11))
    stats = file_stats(old.path)
    assert (stats.records, stats.first_offset, stats.last_offset) == (1, 10, 10)
