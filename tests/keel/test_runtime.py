"""keel.runtime's pure parts, on plain values: the batch that forgets revoked partitions,
the decode that waits out a registry outage, and per-key lanes (threads, no broker). The loop itself runs under the PostgreSQL
sink's tests against the real broker and database (tests/connectors/test_pgsink.py)."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Message

from keel.backoff import Backoff
from keel.deadletters import Failure
from keel.offsets import Entry
from keel.runtime import Batch, Lanes, Letter, decode_with_retry
from tests.polling import wait_for


class Msg:
    """The three coordinates the batch reads of a confluent-kafka Message."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._c = (topic, partition, offset)

    def topic(self) -> str:
        return self._c[0]

    def partition(self) -> int:
        return self._c[1]

    def offset(self) -> int:
        return self._c[2]


def test_a_batch_forgets_what_revoked_partitions_held() -> None:
    a0, a1, b0 = Msg("a", 0, 5), Msg("a", 1, 7), Msg("b", 0, 1)
    batch: Batch[str] = Batch(
        items=["x", "y"],
        messages=[a0, a1],  # type: ignore[list-item]
        letters=[Letter(b0, "undecodable", Failure("bad", "builtins.ValueError"))],  # type: ignore[arg-type]
        offsets={("a", 0): 6, ("a", 1): 8, ("b", 0): 2},
    )
    assert len(batch) == 3
    batch.forget({("a", 1), ("b", 0)})
    assert batch.items == ["x"] and batch.messages == [a0] and batch.letters == []
    assert batch.offsets == {("a", 0): 6}
    batch.forget({("c", 9)})  # nothing of it held: unchanged
    assert len(batch) == 1


class Outage(Exception):
    retriable = True


class Garbage(Exception):
    pass


def test_decode_waits_out_a_retriable_error_and_letters_a_permanent_one() -> None:
    calls: list[bytes] = []

    def decode(value: bytes) -> Any:
        calls.append(value)
        if len(calls) < 3:
            raise Outage("registry down")
        if value == b"junk":
            raise Garbage("not avro")
        return {"ok": value}

    stop, backoff = threading.Event(), Backoff(0.01, first=0.001)
    assert decode_with_retry(decode, b"v", stop, (Outage, Garbage), backoff) == {"ok": b"v"}
    assert len(calls) == 3 and backoff.delay == 0.0  # reset after the outage
    failure = decode_with_retry(decode, b"junk", stop, (Outage, Garbage), backoff)
    assert failure == Failure("not avro", f"{__name__}.Garbage")


def test_decode_gives_up_when_stopping_during_an_outage() -> None:
    def down(value: bytes) -> Any:
        raise Outage("registry down")

    stop = threading.Event()
    stop.set()
    assert decode_with_retry(down, b"v", stop, (Outage,), Backoff(0.01)) is None


def _tracked(key: bytes, offset: int) -> tuple[Message, Entry]:
    return Message(topic="t", partition=0, offset=offset, key=key), Entry(offset)


def test_lanes_keep_each_keys_order_and_run_keys_beside_each_other() -> None:
    seen: dict[bytes, list[int]] = {}
    threads: dict[bytes, set[str]] = {}
    lock = threading.Lock()

    def work(records: list[tuple[Message, Entry]]) -> None:
        for msg, entry in records:
            with lock:
                seen.setdefault(msg.key() or b"", []).append(msg.offset() or 0)
                threads.setdefault(msg.key() or b"", set()).add(threading.current_thread().name)
            entry.finish()

    progress = threading.Event()
    lanes = Lanes("test", 4, work, progress)
    lanes.start()
    keys = [f"user-{i}".encode() for i in range(12)]
    records = [_tracked(keys[n % 12], n) for n in range(600)]
    try:
        for start in range(0, 600, 50):  # batches, as the loop hands them over
            lanes.route(records[start : start + 50])
        wait_for(lambda: all(e.done for _, e in records), 10, "every record handled")
    finally:
        lanes.stop()
    for key in keys:
        assert seen[key] == sorted(seen[key])  # in the order read
        assert len(threads[key]) == 1  # one lane per key
    assert len({t for names in threads.values() for t in names}) == 4
    assert progress.is_set()


def test_a_lane_whose_work_raises_hands_its_records_back_and_goes_on() -> None:
    def work(records: list[tuple[Message, Entry]]) -> None:
        for msg, entry in records:
            if msg.offset() == 1:
                raise RuntimeError("a bug")
            entry.finish()

    lanes = Lanes("test", 1, work, threading.Event())
    lanes.start()
    first, second = [_tracked(b"k", 0), _tracked(b"k", 1)], [_tracked(b"k", 2)]
    try:
        lanes.route(first)
        lanes.route(second)
        wait_for(lambda: second[0][1].done, 10, "the next batch")
    finally:
        lanes.stop()
    assert first[0][1].done and not first[0][1].cancelled
    assert first[1][1].cancelled  # handed back: never committed past, read again later
