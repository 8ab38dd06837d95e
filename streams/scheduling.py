"""The order a stream worker takes fetched records in (Faust's `ConsumerScheduler`).

Faust's default interleaves records one by one: round-robin between topics, and within a
topic round-robin between partitions. Keel keeps the round-robin between topics (the
source and the re-keyed topics stay fair to each other) but hands over each partition's
fetched records as one run, the way Kafka's own consumer returns them from `poll()`.

Why: the engine reads and writes each (partition, key) once per batch (`keel.streams.engine`),
so a batch's cost grows with the partitions it spans. Interleaved, a batch of the
benchmark's 1,250 events over 4 partitions held ~180 of each partition's 250 users, ~720
state writes; in runs, each partition's part of a batch holds several events per user.
A run is at most what one fetch brought for its partition (`consumer_max_fetch_size`), so
no partition waits longer than one fetch of another; order within a partition is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import chain, repeat
from typing import Any, cast

from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP


class PartitionRuns(DefaultSchedulingStrategy):
    def iterate(self, records: Mapping[TP, list[Any]]) -> Iterator[tuple[TP, Any]]:
        by_topic: dict[str, list[Iterator[tuple[TP, Any]]]] = {}
        for tp, messages in records.items():
            by_topic.setdefault(tp.topic, []).append(zip(repeat(tp), messages))
        runs = {topic: chain.from_iterable(parts) for topic, parts in by_topic.items()}
        # Faust's round-robin between topics, over one iterator of runs per topic.
        return self.records_iterator(cast(Any, runs))
