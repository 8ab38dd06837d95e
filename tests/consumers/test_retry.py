"""The retry ladder, its jitter, the decision for a failed job and the headers it carries."""

from __future__ import annotations

import pytest

from keel.consumers.errors import (
    JobConfigError,
    PermanentJobError,
    RetriableJobError,
    UndecodableJob,
    is_retriable,
)
from keel.consumers.retry import (
    H_ATTEMPT,
    H_DUE_AT,
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TOPIC,
    H_REASON,
    REASON_EXHAUSTED,
    REASON_PERMANENT,
    DelayQueue,
    Origin,
    RetryPolicy,
    attempts_of,
    dead_letter_headers,
    due_at_of,
    header_map,
    parse_ladder,
    retry_headers,
)


def test_parse_ladder_units() -> None:
    assert parse_ladder("10s,1m,10m") == (10.0, 60.0, 600.0)
    assert parse_ladder("500ms, 2, 1h") == (0.5, 2.0, 3600.0)
    assert parse_ladder("") == ()


@pytest.mark.parametrize("bad", ["10x", "ten", "1m,,2m", "-1s"])
def test_parse_ladder_rejects_bad_steps_naming_them(bad: str) -> None:
    with pytest.raises(JobConfigError, match="bad retry ladder step"):
        parse_ladder(bad)


def test_jitter_bounds_and_validation() -> None:
    policy = RetryPolicy((10.0, 60.0), jitter=0.2)
    assert policy.delay(1, rand=lambda: 0.0) == pytest.approx(8.0)
    assert policy.delay(1, rand=lambda: 1.0) == pytest.approx(12.0)
    assert policy.delay(2, rand=lambda: 0.5) == pytest.approx(60.0)
    with pytest.raises(JobConfigError):
        RetryPolicy((1.0,), jitter=1.5)
    with pytest.raises(JobConfigError):
        RetryPolicy((-1.0,), jitter=0)


def test_decisions_walk_the_ladder_then_dead_letter() -> None:
    policy = RetryPolicy((10.0, 60.0), jitter=0.0)
    first = policy.decide(1, retriable=True, now_ms=1_000)
    assert first.retry and first.due_at_ms == 11_000
    second = policy.decide(2, retriable=True, now_ms=1_000)
    assert second.retry and second.due_at_ms == 61_000
    last = policy.decide(3, retriable=True, now_ms=1_000)
    assert not last.retry and last.reason == REASON_EXHAUSTED
    assert policy.max_attempts == 3


def test_permanent_error_goes_straight_to_dead_letters() -> None:
    decision = RetryPolicy((10.0,), 0.1).decide(1, retriable=False, now_ms=0)
    assert not decision.retry and decision.reason == REASON_PERMANENT


def test_no_ladder_means_no_retry() -> None:
    decision = RetryPolicy((), 0).decide(1, retriable=True, now_ms=0)
    assert not decision.retry and decision.reason == REASON_EXHAUSTED


def test_error_classification() -> None:
    assert is_retriable(RetriableJobError("smtp 451"))
    assert not is_retriable(PermanentJobError("no template"))
    assert not is_retriable(UndecodableJob("bad bytes"))
    assert is_retriable(ConnectionRefusedError())
    assert is_retriable(RuntimeError("unknown: walk the ladder"))

    class Flagged(Exception):
        retriable = False

    assert not is_retriable(Flagged())


def test_retry_headers_round_trip_through_kafka_shapes() -> None:
    policy = RetryPolicy((10.0,), jitter=0)
    origin = Origin("jobs.email", 2, 41, 1_700)
    decision = policy.decide(1, retriable=True, now_ms=5_000)
    headers = retry_headers("email", decision, origin, RetriableJobError("busy"), 5_000)
    # confluent-kafka hands headers back as (str, bytes) pairs
    as_read = header_map([(k, v.encode() if isinstance(v, str) else v) for k, v in headers])
    assert attempts_of(as_read) == 1
    assert due_at_of(as_read) == 15_000
    assert as_read[H_ERROR] == "busy"
    # the original coordinates survive a second hop through the retry topic
    assert Origin.of(as_read, "jobs.email.retry", 0, 7, 9_999) == origin
    assert Origin.of({}, "jobs.email", 1, 3, 5) == Origin("jobs.email", 1, 3, 5)


def test_dead_letter_headers_name_reason_attempts_and_origin() -> None:
    origin = Origin("jobs.report", 0, 12, 0)
    headers = header_map(
        dead_letter_headers("report", 4, REASON_EXHAUSTED, origin, ValueError("x" * 5000), now_ms=1)
    )
    assert headers[H_REASON] == REASON_EXHAUSTED
    assert headers[H_ATTEMPT] == "4"
    assert headers[H_ORIG_TOPIC] == "jobs.report"
    assert headers[H_ORIG_PARTITION] == "0"
    assert headers[H_ORIG_OFFSET] == "12"
    assert len(headers[H_ERROR]) == 2000


def test_header_helpers_tolerate_garbage() -> None:
    assert attempts_of({H_ATTEMPT: "nope"}) == 0
    assert due_at_of({H_DUE_AT: ""}) == 0
    assert header_map(None) == {}
    assert header_map([("a", None)]) == {"a": ""}
    assert header_map({"a": b"1"}) == {"a": "1"}


def test_delay_queue_orders_by_due_time_and_drops_groups() -> None:
    q = DelayQueue()
    q.push(300, "c", group="p1")
    q.push(100, "a", group="p0")
    q.push(100, "b", group="p1")
    assert q.next_due() == 100
    assert q.pop_due(50) == []
    assert q.pop_due(100) == ["a", "b"]
    q.push(200, "d", group="p0")
    assert q.drop_groups({"p1"}) == ["c"]
    assert len(q) == 1
    assert q.drop_groups() == ["d"]
    assert q.next_due() is None
