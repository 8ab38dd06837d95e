"""The webhook sink's pure parts: signing and verifying, which answers are retried, backoff,
the subscriptions file, event bodies and the per-partition commit point."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import ClientConnectionError, InvalidURL, ServerTimeoutError

from keel.connectors.webhooks import (
    REASON_EXHAUSTED,
    REASON_EXPIRED,
    RetryPolicy,
    SignatureError,
    SubscriptionError,
    Verdict,
    classify_error,
    classify_status,
    delivery_id,
    event_body,
    load_subscriptions,
    parse_retry_after,
    parse_subscriptions,
    signature,
    signature_header,
    verify,
)
from keel.offsets import Entry, OffsetTracker

SECRET = "whsec_test_0123456789"
BODY = b'{"event_id":"e1","type":"user.signed_up"}'


# -- signing ------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == expected
    assert signature_header(SECRET, BODY, 1700000000) == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature_and_returns_its_timestamp() -> None:
    header = signature_header(SECRET, BODY, 1700000000)
    assert verify(SECRET, BODY, header, now=1700000010) == 1700000000


@pytest.mark.parametrize(
    ("secret", "body", "why"),
    [
        ("whsec_other_0123456789", BODY, "no v1 signature matches"),
        (SECRET, BODY + b" ", "no v1 signature matches"),
    ],
)
def test_verify_refuses_another_secret_or_a_changed_body(
    secret: str, body: bytes, why: str
) -> None:
    header = signature_header(SECRET, BODY, 1700000000)
    with pytest.raises(SignatureError, match=why):
        verify(secret, body, header, now=1700000000)


def test_verify_refuses_an_old_timestamp_unless_tolerance_is_off() -> None:
    header = signature_header(SECRET, BODY, 1700000000)
    with pytest.raises(SignatureError, match="more than 300s from now"):
        verify(SECRET, BODY, header, now=1700000301)
    assert verify(SECRET, BODY, header, now=1800000000, tolerance_s=0) == 1700000000


def test_verify_accepts_any_of_several_v1_values_while_rotating_secrets() -> None:
    good = signature(SECRET, 1700000000, BODY)
    header = f"t=1700000000,v1={'0' * 64},v1={good}"
    assert verify(SECRET, BODY, header, now=1700000000) == 1700000000


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("v1=abc", "no t=<timestamp>"),
        ("t=1700000000", "no v1=<signature>"),
        ("t=soon,v1=abc", "not an integer"),
        ("", "no t=<timestamp>"),
    ],
)
def test_verify_names_what_is_wrong_with_a_malformed_header(header: str, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        verify(SECRET, BODY, header, now=1700000000)


# -- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.SUCCESS),
        (201, Verdict.SUCCESS),
        (204, Verdict.SUCCESS),
        (301, Verdict.PERMANENT),
        (400, Verdict.PERMANENT),
        (401, Verdict.PERMANENT),
        (404, Verdict.PERMANENT),
        (410, Verdict.PERMANENT),
        (422, Verdict.PERMANENT),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
    ],
)
def test_status_classification(status: int, verdict: Verdict) -> None:
    assert classify_status(status).verdict is verdict


def test_retry_after_is_read_from_a_429_or_503() -> None:
    assert classify_status(429, "7").retry_after == 7.0
    assert classify_status(503, "Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480).retry_after == 10
    assert classify_status(503).retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        (None, None),
        ("-3", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=1445412490) == seconds


def test_the_answer_snippet_is_kept_in_the_detail() -> None:
    outcome = classify_status(400, snippet='{"error":"unknown user"}')
    assert outcome.detail == 'HTTP 400: {"error":"unknown user"}'


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ServerTimeoutError("read timed out"), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (ClientConnectionError("refused"), Verdict.RETRY),
        (ConnectionResetError("reset"), Verdict.RETRY),
        (InvalidURL("not a url"), Verdict.PERMANENT),
    ],
)
def test_error_classification(exc: BaseException, verdict: Verdict) -> None:
    assert classify_error(exc).verdict is verdict


# -- backoff ------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter_below_the_ceiling() -> None:
    policy = RetryPolicy(initial_s=0.5, max_s=8.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in draws), (attempt, min(draws), max(draws))
        assert max(draws) - min(draws) > ceiling * 0.3  # jitter really spreads them


def test_backoff_without_jitter_is_exact() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=60.0, jitter=0)
    assert [policy.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff(10_000) == 60  # no overflow for a huge attempt number


def test_next_retry_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_s=1000, initial_s=1, jitter=0)
    assert policy.next_retry(1, 0) == (1, "")
    assert policy.next_retry(2, 1) == (2, "")
    assert policy.next_retry(3, 3) == (None, REASON_EXHAUSTED)


def test_next_retry_gives_up_when_the_wait_would_pass_max_age() -> None:
    policy = RetryPolicy(max_attempts=100, max_age_s=10, initial_s=4, jitter=0)
    assert policy.next_retry(1, 5.0) == (4, "")
    assert policy.next_retry(2, 5.0) == (None, REASON_EXPIRED)  # 5 + 8 > 10


def test_retry_after_is_honoured_as_a_floor_and_counts_against_max_age() -> None:
    policy = RetryPolicy(max_attempts=10, max_age_s=60, initial_s=0.5, jitter=0)
    assert policy.next_retry(1, 0, retry_after=5) == (5, "")
    assert policy.next_retry(5, 0, retry_after=0) == (8, "")  # backoff larger than asked
    assert policy.next_retry(1, 0, retry_after=3600) == (None, REASON_EXPIRED)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"max_age_s": 0}, {"initial_s": -1}, {"jitter": 1.5}]
)
def test_retry_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- subscriptions ------------------------------------------------------------------------

GOOD = {
    "name": "billing",
    "url": "https://billing.example.com/hooks",
    "events": ["order.placed", "user.*"],
    "secret": SECRET,
}


def test_a_toml_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_text(
        "[[subscriptions]]\n"
        'name = "billing"\nurl = "https://billing.example.com/hooks"\n'
        'events = ["order.placed", "user.*"]\nsecret = "whsec_test_0123456789"\n\n'
        "[[subscriptions]]\n"
        'name = "audit"\nurl = "http://127.0.0.1:9000/in"\nsecret = "whsec_audit_0123456789"\n'
        "max_attempts = 3\n"
    )
    billing, audit = load_subscriptions(path)
    assert billing.wants("order.placed") and billing.wants("user.signed_up")
    assert not billing.wants("page.viewed")
    assert audit.events == "*" and audit.wants("page.viewed")
    assert audit.max_attempts == 3 and billing.max_attempts is None
    assert SECRET not in repr(billing)  # secrets never reach logs


def test_a_json_file_loads_as_an_object_or_a_bare_list(tmp_path: Path) -> None:
    path = tmp_path / "hooks.json"
    path.write_text(json.dumps({"subscriptions": [GOOD]}))
    assert [s.name for s in load_subscriptions(path)] == ["billing"]
    path.write_text(json.dumps([GOOD]))
    assert [s.name for s in load_subscriptions(path)] == ["billing"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "ftp://x"}, "subscription 'billing' (#2) field 'url': URL scheme"),
        ({"url": None}, "subscription 'billing' (#2) field 'url'"),
        ({"secret": "short"}, "field 'secret': must be at least 16 characters"),
        ({"events": ["order.shipped"]}, "field 'events': 'order.shipped' matches no event type"),
        ({"events": []}, "field 'events': must name at least one event type"),
        ({"events": "all"}, "subscription 'billing' (#2) field 'events"),
        ({"name": "has space"}, "subscription 'has space' (#2) field 'name'"),
        ({"max_attempts": 0}, "field 'max_attempts': Input should be greater than or equal to 1"),
        ({"timeout_s": -1}, "field 'timeout_s'"),
        ({"retries": 3}, "field 'retries': Extra inputs are not permitted"),
    ],
)
def test_a_bad_subscription_is_named_with_its_field(
    change: dict[str, object], message: str
) -> None:
    other = {**GOOD, "name": "first"}
    bad = {**GOOD, **change}
    with pytest.raises(SubscriptionError) as caught:
        parse_subscriptions({"subscriptions": [other, bad]}, "hooks.toml")
    assert str(caught.value).startswith("hooks.toml: ")
    assert message in str(caught.value)


def test_a_missing_field_and_a_duplicate_name_are_named() -> None:
    missing = {k: v for k, v in GOOD.items() if k != "secret"}
    with pytest.raises(SubscriptionError, match=r"'billing' \(#1\) field 'secret': Field required"):
        parse_subscriptions([missing])
    with pytest.raises(SubscriptionError, match=r"'billing' \(#2\) field 'name': already used"):
        parse_subscriptions([GOOD, GOOD])
    with pytest.raises(SubscriptionError, match="at least 1 item"):
        parse_subscriptions({"subscriptions": []})


def test_unreadable_files_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SubscriptionError, match="cannot read it"):
        load_subscriptions(tmp_path / "missing.toml")
    (tmp_path / "hooks.yaml").write_text("x")
    with pytest.raises(SubscriptionError, match=r"ends in \.toml or \.json"):
        load_subscriptions(tmp_path / "hooks.yaml")
    (tmp_path / "broken.toml").write_text("[[subscriptions]\n")
    with pytest.raises(SubscriptionError, match="not valid TOML"):
        load_subscriptions(tmp_path / "broken.toml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SubscriptionError, match="not valid JSON"):
        load_subscriptions(tmp_path / "broken.json")


# -- bodies, ids, commit point ------------------------------------------------------------


def test_event_body_is_compact_json_with_exact_decimals() -> None:
    body = event_body({"event_id": "e1", "total": Decimal("19.90"), "raw": b"\x00\x01", "n": 1})
    assert body == b'{"event_id":"e1","total":"19.90","raw":"AAE=","n":1}'


def test_delivery_id_is_stable_per_subscriber_and_record() -> None:
    assert delivery_id("a", "events", 1, 5) == delivery_id("a", "events", 1, 5)
    assert delivery_id("a", "events", 1, 5) != delivery_id("b", "events", 1, 5)
    assert delivery_id("a", "events", 1, 5) != delivery_id("a", "events", 1, 6)


def test_the_commit_point_moves_only_past_events_every_subscriber_finished() -> None:
    # The runtime's offset tracker, as the sink uses it: an entry per event, expecting as
    # many effects as subscribers want it.
    tracker, tp = OffsetTracker(), ("events", 0)

    def add(offset: int, waiting: int) -> Entry:
        entry = tracker.track(tp, offset)
        entry.expect(waiting)
        return entry

    e10 = add(10, 2)
    add(11, 0)  # wanted by nobody
    e12 = add(12, 1)
    assert tracker.committable() == {}
    e12.finish()  # a later event finished first: still waiting for 10
    assert tracker.committable() == {} and tracker.pending(tp) == 3
    e10.finish()
    assert tracker.committable() == {}  # one subscriber left on 10
    e10.finish()
    assert tracker.committable() == {tp: 13} and tracker.pending(tp) == 0
    add(13, 0)
    assert tracker.committable() == {tp: 14}
