"""The layout, pure: `<root>/<topic>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first
offset>.jsonl.gz`, the hour taken from the record's Kafka timestamp in UTC (`archive_path`,
`parse_path`, `hour_of`, `parse_hour`), and the listing of a root's files."""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from keel.errors import KeelError

log = logging.getLogger(__name__)

EXT = ".jsonl.gz"
TMP_SUFFIX = ".tmp"
_FILE_RE = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<offset>\d+)\.jsonl\.gz$"
)
_HOUR_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2})(?::00(?::00)?)?Z?$")
HOUR_FORMAT = "YYYY-MM-DDTHH"
HOUR_MS = 3_600_000


class ArchiveError(KeelError):
    """Root of the archive sink's errors; its message is one line for the user."""


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
