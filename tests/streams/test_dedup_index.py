"""The local event_id index a worker rebuilds from the dedup table's batch records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.streams.dedup_index import DedupIndex, batch_record_key


def test_two_records_starting_at_one_offset_both_survive_compaction(tmp_path: Path) -> None:
    # A worker that lost partition 2 mid-batch still writes its record (events 100-101) after
    # the new owner wrote its own replay (events 100-103, 100-101 not yet indexed there).
    # The changelog is compacted: a dict keyed like it keeps the last value of each key.
    compacted: dict[str, Any] = {}
    late = {"e": [["a", 100, 1], ["b", 101, 1]]}
    replay = {"e": [["a", 100, 1], ["b", 101, 1], ["c", 102, 1], ["d", 103, 1]]}
    compacted[batch_record_key(2, 100, "owner.0")] = replay
    compacted[batch_record_key(2, 100, "loser.7")] = late

    index = DedupIndex(tmp_path / "index", ttl_s=3600)
    try:
        assert index.index_batches(list(compacted), compacted.get) == 2
        assert index.get_many(2, ["a", "b", "c", "d"]) == [[100, 1], [101, 1], [102, 1], [103, 1]]
        # Indexed once: a second pass (the next rebalance) reads nothing again.
        assert index.index_batches(list(compacted), compacted.get) == 0
    finally:
        index.close()


def test_record_keys_name_the_partition_first() -> None:
    key = batch_record_key(3, 42, "w1.0")
    assert key.split(":", 1)[0] == "3"
    assert key != batch_record_key(3, 42, "w2.0")
