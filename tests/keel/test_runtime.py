"""keel.runtime's pure parts, on plain values: the batch that forgets revoked partitions
and the decode that waits out a registry outage. The loop itself runs under the PostgreSQL
sink's tests against the real broker and database (tests/connectors/test_pgsink.py)."""

from __future__ import annotations

import threading
from typing import Any

from keel.backoff import Backoff
from keel.deadletters import Failure
from keel.runtime import Batch, Letter, decode_with_retry


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
