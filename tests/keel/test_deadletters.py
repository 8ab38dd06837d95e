"""`keel dlq` against the real broker: list any dead-letter topic, replay each letter once to
the topic it came from (or another), refuse letters with nowhere to go without writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from keel.deadletters import (
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TOPIC,
    H_PROCESSOR,
    H_REASON,
    H_REPLAY_PROCESSOR,
    H_REPLAYED_FROM,
    header_map,
    replayed_for,
)

KEEL = str(Path(sys.executable).parent / "keel")


def _dead(bootstrap: str, dlq: str, letters: list[tuple[bytes, dict[str, str]]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value, headers in letters:
        producer.produce(dlq, value, key=b"k-" + value, headers=list(headers.items()))
    assert producer.flush(30) == 0


def _headers(origin: str | None, reason: str = "processor_error") -> dict[str, str]:
    base = {H_REASON: reason, H_ERROR: "boom"}
    if origin:
        base |= {H_ORIG_TOPIC: origin, H_ORIG_PARTITION: "0", H_ORIG_OFFSET: "7"}
    return base


def _keel(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEEL_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [KEEL, "dlq", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _all(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, str]]]:
    """Every message of a one-partition topic, read up to its end offset."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        if end == 0:
            return []
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[tuple[bytes, dict[str, str]]] = []
        while len(out) < end:
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(out)} of {end} messages in {topic}"
            if msg.error() is None:
                out.append((msg.value() or b"", header_map(msg.headers())))
        return out
    finally:
        consumer.close()


def test_list_then_replay_each_letter_once_to_where_it_came_from(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    source, dlq = new_topic("origin"), new_topic("dlq")
    _dead(kafka_bootstrap, dlq, [(b"a", _headers(source)), (b"b", _headers(source))])

    listed = _keel(kafka_bootstrap, "list", dlq, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["key"], r["reason"], r["origin"]) for r in rows] == [
        ("k-a", "processor_error", f"{source}/0@7"),
        ("k-b", "processor_error", f"{source}/0@7"),
    ]

    first = _keel(kafka_bootstrap, "replay", dlq)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"replayed 2 dead letter(s) from {dlq} to {source}"
    again = _keel(kafka_bootstrap, "replay", dlq)
    assert again.stdout.strip() == f"replayed 0 dead letter(s) from {dlq}"
    back = _all(kafka_bootstrap, source)
    assert [v for v, _ in back] == [b"a", b"b"]  # the original bytes, once each
    assert [h["keel.replayed_from"] for _, h in back] == [f"{dlq}/0@0", f"{dlq}/0@1"]


def test_a_letter_with_no_origin_needs_a_target_and_nothing_is_written(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    source, dlq, elsewhere = new_topic("origin"), new_topic("dlq"), new_topic("elsewhere")
    _dead(kafka_bootstrap, dlq, [(b"a", _headers(source)), (b"x", _headers(None))])

    refused = _keel(kafka_bootstrap, "replay", dlq)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"keel: error: 1 dead letter(s) name no original topic (first {dlq}/0@1): "
        "give the target with --to"
    )
    assert _all(kafka_bootstrap, source) == []  # not even the letter that had a home

    sent = _keel(kafka_bootstrap, "replay", dlq, "--to", elsewhere)
    assert sent.returncode == 0, sent.stderr
    assert [v for v, _ in _all(kafka_bootstrap, elsewhere)] == [b"a", b"x"]


def test_a_missing_topic_is_one_line_and_exit_1(kafka_bootstrap: str) -> None:
    result = _keel(kafka_bootstrap, "list", "test-no-such-dlq-7f3a")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"keel: error: Kafka at {kafka_bootstrap}: dead-letter topic test-no-such-dlq-7f3a "
        "does not exist"
    )


def test_replay_tells_a_stream_worker_which_processor_the_letter_is_for(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    source, dlq = new_topic("origin"), new_topic("dlq")
    failed = _headers(source, reason="processor") | {H_PROCESSOR: "user_activity"}
    _dead(kafka_bootstrap, dlq, [(b"a", failed), (b"b", _headers(source, reason="undecodable"))])

    sent = _keel(kafka_bootstrap, "replay", dlq)
    assert sent.returncode == 0, sent.stderr
    [(_, a), (_, b)] = _all(kafka_bootstrap, source)
    assert a == {H_REPLAYED_FROM: f"{dlq}/0@0", H_REPLAY_PROCESSOR: "user_activity"}
    assert b == {H_REPLAYED_FROM: f"{dlq}/0@1"}  # counted by no processor: all get it
    assert replayed_for(list(a.items())) == "user_activity"
    assert replayed_for(b) is None


def test_replayed_for_needs_a_replay_that_names_a_processor() -> None:
    replayed = (H_REPLAYED_FROM, b"events.dlq/0@3")
    assert replayed_for([replayed, (H_REPLAY_PROCESSOR, b"views")]) == "views"
    assert replayed_for({H_REPLAY_PROCESSOR: "views"}) is None  # not a replay
    assert replayed_for([replayed, (H_REPLAY_PROCESSOR, b"")]) is None
    assert replayed_for([replayed]) is None
    assert replayed_for(None) is None and replayed_for(()) is None


@pytest.mark.parametrize("command", ["list", "replay"])
def test_unreachable_brokers_are_one_line_naming_them(command: str) -> None:
    from keel.local.ports import free_base_port

    # Below the ephemeral range: a client connecting to a free ephemeral port can get that very
    # port as its own source port and talk to itself (TCP self-connect), and read an answer.
    nowhere = f"127.0.0.1:{free_base_port()}"  # nothing listens there
    result = _keel(nowhere, command, "events.dlq")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"keel: error: Kafka at {nowhere}: reading dead-letter topic events.dlq: "
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the one writer of dead-letter headers -------------------------------------------------


def test_letter_headers_carry_reason_error_class_origin_and_extras() -> None:
    from keel.deadletters import (
        H_ERROR_CLASS,
        H_ORIG_TIMESTAMP,
        Failure,
        Origin,
        letter_headers,
    )

    headers = header_map(
        letter_headers(
            "undecodable",
            Failure.of(ValueError("bad byte")),
            Origin("events", 2, 41, 1_700),
            [("keel.webhooks.subscriber", "billing")],
        )
    )
    assert headers == {
        "keel.dlq.reason": "undecodable",
        "keel.error": "bad byte",
        H_ERROR_CLASS: "builtins.ValueError",
        "keel.original.topic": "events",
        "keel.original.partition": "2",
        "keel.original.offset": "41",
        H_ORIG_TIMESTAMP: "1700",
        "keel.webhooks.subscriber": "billing",
    }
    # An exception without a message is named by its class.
    assert Failure.of(KeyError()).message == "KeyError"


def test_one_truncation_rule_cuts_bytes_on_a_character_boundary() -> None:
    from keel.deadletters import MAX_ERROR_BYTES, truncate_error

    assert truncate_error("short") == "short"
    cut = truncate_error("é" * MAX_ERROR_BYTES)  # two bytes each
    assert len(cut.encode()) == MAX_ERROR_BYTES and cut == "é" * (MAX_ERROR_BYTES // 2)
    odd = truncate_error("a" + "é" * MAX_ERROR_BYTES)  # the limit falls inside a character
    assert len(odd.encode()) == MAX_ERROR_BYTES - 1 and odd.endswith("é")
