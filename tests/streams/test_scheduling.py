"""The order a worker takes fetched records in: each partition's records as one run, in
offset order, with Faust's round-robin between topics kept. Pure: no broker."""

from __future__ import annotations

from faust.types import TP

from keel.streams.scheduling import PartitionRuns


def test_partitions_come_in_runs_and_topics_take_turns() -> None:
    a0, a1, b0 = TP("a", 0), TP("a", 1), TP("b", 0)
    records = {a0: ["a0-1", "a0-2", "a0-3"], a1: ["a1-1", "a1-2"], b0: ["b0-1", "b0-2"]}
    order = list(PartitionRuns().iterate(records))
    assert order == [
        (a0, "a0-1"),
        (b0, "b0-1"),
        (a0, "a0-2"),
        (b0, "b0-2"),
        (a0, "a0-3"),
        (a1, "a1-1"),
        (a1, "a1-2"),
    ]


def test_every_record_once_in_partition_order() -> None:
    records = {TP("t", p): [f"{p}-{i}" for i in range(50 + p)] for p in range(6)}
    order = list(PartitionRuns().iterate(records))
    assert sorted(order) == sorted((tp, r) for tp, rs in records.items() for r in rs)
    for tp, rs in records.items():
        assert [r for t, r in order if t == tp] == rs
    partitions = [tp.partition for tp, _ in order]
    runs = [p for i, p in enumerate(partitions) if i == 0 or partitions[i - 1] != p]
    assert runs == list(range(6))  # one run per partition


def test_nothing_fetched() -> None:
    assert list(PartitionRuns().iterate({})) == []
