"""The archive sink: Kafka records written unchanged to files by topic, hour and partition,
for retention beyond Kafka's and for backfills; and `restore`, the way back.

A package split at the pure/I-O seam, one module each:
- `layout`, pure: `<root>/<topic>/dt=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first
  offset>.jsonl.gz`, the hour taken from the record's Kafka timestamp in UTC
  (`archive_path`, `parse_path`, `hour_of`, `parse_hour`);
- `fileformat`, pure (`encode_record`, `decode_line`, `read_file`);
- `writer`: when a file is closed (`RollPolicy`: compressed size, record count, age; and at every
  change of hour within a partition);
- `sink` (`ArchiveSink`): one consumer group (read_committed, manual commits) on the
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

from keel.connectors.archive.fileformat import (
    ArchivedRecord,
    FileStats,
    decode_line,
    encode_record,
    file_stats,
    read_file,
    stats_path,
)
from keel.connectors.archive.layout import (
    ArchiveError,
    ArchiveFile,
    archive_path,
    file_name,
    format_hour,
    hour_of,
    list_files,
    parse_hour,
    parse_path,
)
from keel.connectors.archive.restore import H_ARCHIVE_FILE, RestoreResult, describe, restore
from keel.connectors.archive.sink import ArchiveSink, archive_root, check_root, health_server
from keel.connectors.archive.writer import OpenFile, RollPolicy

__all__ = [
    "H_ARCHIVE_FILE",
    "ArchiveError",
    "ArchiveFile",
    "ArchiveSink",
    "ArchivedRecord",
    "FileStats",
    "OpenFile",
    "RestoreResult",
    "RollPolicy",
    "archive_path",
    "archive_root",
    "check_root",
    "decode_line",
    "describe",
    "encode_record",
    "file_name",
    "file_stats",
    "format_hour",
    "health_server",
    "hour_of",
    "list_files",
    "parse_hour",
    "parse_path",
    "read_file",
    "restore",
    "stats_path",
]
