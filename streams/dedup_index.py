"""The local index of seen event_ids, one RocksDB (rocksdict) per source partition.

Why not a Faust table keyed by event_id: that costs one changelog message per event, which
measured here (profiled) made the processor several times slower than Faust's own floor.
Instead each batch writes ONE changelog record holding all its new entries (the `dedup`
table, keyed by `batch_record_key`), and every worker keeps this local index of the
entries. After a rebalance, `index_batches` adds the entries of batch records the worker
has not indexed yet (restored from the changelog or kept as a standby), so an event_id
seen by a worker that died is still known to the one that takes its partition over.

An entry is a fact about the log ("event_id was first seen at offset o"), so an entry
whose batch record never reached Kafka (crash) does no harm: the replayed message has the
same offset and `keel.streams.dedup.is_duplicate` treats it as itself, not as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from rocksdict import AccessType, Options, Rdict, WriteBatch

MARK = b"\x00batch:"


def batch_record_key(partition: int, first_offset: int, writer: str) -> str:
    """`<partition>:<first offset>:<writer>`. The writer part (unique per worker process and
    record) keeps two records apart that start at the same offset: a worker still finishing
    a batch of a partition it just lost, and the new owner replaying it, write records
    whose entries differ, and on a compacted topic one would erase the other."""
    return f"{partition}:{first_offset}:{writer}"


class DedupIndex:
    def __init__(self, root: Path, ttl_s: int) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self._dbs: dict[int, Rdict] = {}

    def _db(self, partition: int) -> Rdict:
        db = self._dbs.get(partition)
        if db is None:
            path = self.root / f"p{partition}"
            path.parent.mkdir(parents=True, exist_ok=True)
            options = Options(raw_mode=True)
            options.create_if_missing(True)
            # Entries older than twice the window are dropped by compaction.
            db = Rdict(str(path), options=options, access_type=AccessType.with_ttl(self.ttl_s))
            self._dbs[partition] = db
        return db

    def get(self, partition: int, event_id: str) -> list[int] | None:
        raw = self._db(partition).get(event_id.encode())
        if raw is None:
            return None
        offset, _, ts = raw.partition(b":")
        return [int(offset), int(ts)]

    def get_many(self, partition: int, event_ids: Sequence[str]) -> list[list[int] | None]:
        """The entries of many event_ids in one RocksDB multi-get (a batch's worth)."""
        if not event_ids:
            return []
        found = cast("list[bytes | None]", self._db(partition).get([e.encode() for e in event_ids]))
        out: list[list[int] | None] = []
        for raw in found:
            if raw is None:
                out.append(None)
            else:
                offset, _, ts = raw.partition(b":")
                out.append([int(offset), int(ts)])
        return out

    def put_many(self, partition: int, entries: Mapping[str, Sequence[int]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for event_id, (offset, ts) in entries.items():
            batch.put(event_id.encode(), f"{offset}:{ts}".encode())
        self._db(partition).write(batch)

    def index_batches(self, keys: Iterable[Any], value_of: Callable[[Any], Any]) -> int:
        """Index the batch records (key from `batch_record_key`, value {"e": [[id, o, ts]]})
        not indexed before; returns how many were new. Only new records are read (a key is
        never written twice, so an indexed one cannot have changed)."""
        added = 0
        for key in keys:
            partition = int(str(key).split(":", 1)[0])
            db = self._db(partition)
            mark = MARK + str(key).encode()
            if db.get(mark) is not None:
                continue
            value = value_of(key)
            if isinstance(value, Mapping):
                entries = {e[0]: (int(e[1]), int(e[2])) for e in value.get("e", ())}
                self.put_many(partition, entries)
            db[mark] = b"1"
            added += 1
        return added

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()
