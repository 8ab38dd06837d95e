"""End to end through real `keel streams worker` processes: Avro events in, exact views over
the query API (routed between workers) and in Redis, job events on the job topics, poison
messages in the dead-letter topic."""

from __future__ import annotations

import json
import struct
import urllib.request
import uuid
from typing import Any

import redis

from keel.deadletters import H_ORIG_OFFSET, H_ORIG_PARTITION, DeadLetter
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv

HOUR = "2026-11-28T08:00:00Z"


def at(minute: int, second: int = 0) -> str:
    return f"2026-11-28T08:{minute:02d}:{second:02d}Z"


def ev(event_type: str, user_id: str, when: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "user_id": user_id,
        "occurred_at": when,
        **fields,
    }


def story() -> list[dict[str, Any]]:
    view = ev("product.viewed", "u1", at(1), product_id="p1", currency="EUR")
    return [
        ev("user.signed_up", "u1", at(0), email="ada@example.com", name="Ada"),
        view,
        dict(view),  # the client retried: same event_id, counted once
        ev("product.viewed", "u2", at(2), product_id="p1", currency="EUR"),
        ev(
            "cart.item_added",
            "u1",
            at(3),
            product_id="p1",
            quantity=2,
            unit_price="5.00",
            currency="EUR",
        ),
        ev(
            "order.placed",
            "u1",
            at(4),
            order_id="o-1",
            currency="EUR",
            total="12.50",
            items=[
                {"product_id": "p1", "quantity": 2, "unit_price": "5.00"},
                {"product_id": "p2", "quantity": 1, "unit_price": "2.50"},
            ],
        ),
        ev("user.signed_up", "u2", at(5), email="bob@old.example", name=None),
        ev(
            "user.profile_updated",
            "u2",
            at(6),
            email="bob@new.example",
            name="Bob",
            changed_fields=["email", "name"],
        ),
        ev(
            "report.requested",
            "u2",
            at(7),
            kind="activity",
            period_start="2026-11-01T00:00:00Z",
            period_end="2026-11-28T00:00:00Z",
        ),
        ev(
            "page.viewed",
            "u3",
            "2026-11-28T09:15:00Z",
            url="https://shop.example/",
            path="/",
            title=None,
            referrer=None,
        ),
    ]


POISON = [b"not avro at all", b"\x00" + struct.pack(">I", 987_654_321) + b"\x02\x04"]


def test_events_become_views_jobs_cache_entries_and_dead_letters(
    streams_env: StreamsEnv, redis_url: str
) -> None:
    cache = redis.Redis.from_url(redis_url)
    cache.set(f"{streams_env.cache_prefix}profile:u2", "stale profile")
    first = streams_env.start_worker()
    second = streams_env.start_worker()
    events = story()
    streams_env.send(events, poison=POISON)

    def u1_done() -> Any:
        status, body = streams_env.view("user_activity", "u1", worker=first)
        return body if status == 200 and body.get("orders") == 1 else None

    u1 = wait_for(u1_done, 60, "user_activity of u1")
    assert u1["counts"] == {
        "user.signed_up": 1,
        "product.viewed": 1,
        "cart.item_added": 1,
        "order.placed": 1,
    }
    assert u1["events"] == 4
    assert u1["lifetime_value"] == {"EUR": "12.50"}
    assert (u1["first_seen"], u1["last_seen"]) == (at(0), at(4))
    # Any worker answers: the one that does not own u1's partition forwards the query.
    for worker in (first, second):
        assert streams_env.view("user_activity", "u1", worker=worker) == (200, u1)

    # u1's and u2's events reach p1's partition of the product repartition topic from two
    # workers, in no fixed order: wait for the whole window, not for its last event.
    p1_want = {
        "window_start": HOUR,
        "views": 2,
        "cart_adds": 1,
        "orders": 1,
        "conversion_rate": 0.5,
    }

    def p1_window() -> Any:
        return streams_env.view("product_stats", "p1", window=at(30))

    try:
        wait_for(lambda: p1_window() == (200, p1_want), 30, "product_stats of p1")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: got {p1_window()}") from None
    assert streams_env.view("product_stats", "p2", window=HOUR)[1]["orders"] == 1

    def active(gran: str, when: str, users: int) -> Any:
        status, body = streams_env.view("active_users", gran, window=when)
        return status == 200 and body["users"] == users

    wait_for(
        lambda: (
            active("hour", HOUR, 2)
            and active("hour", "2026-11-28T09:00:00Z", 1)
            and active("day", "2026-11-28", 3)
            and active("minute", at(1), 1)
        ),
        30,
        "active users",
    )

    # Unknown keys and views are 404, a bad window 400, with a JSON error naming it.
    status, body = streams_env.view("user_activity", "nobody")
    assert status == 404 and "nobody" in body["error"]
    status, body = streams_env.view("no_such_view", "u1")
    assert status == 404 and "no_such_view" in body["error"]
    status, body = streams_env.view("product_stats", "p1", window="noon-ish")
    assert status == 400 and "noon-ish" in body["error"]
    assert streams_env.view("product_stats", "p1", window="2026-11-27T08:00:00Z")[0] == 404

    # Redis: one hash per key with a TTL; the profile cache of u2 invalidated.
    def cached() -> Any:
        fields = cache.hgetall(f"{streams_env.cache_prefix}view:user_activity:u1")
        return fields if fields.get(b"orders") == b"1" else None

    fields = wait_for(cached, 30, "user_activity of u1 in Redis")
    assert json.loads(fields[b"counts"])["product.viewed"] == 1
    assert fields[b"lifetime_value"] == b'{"EUR": "12.50"}'
    assert cache.ttl(f"{streams_env.cache_prefix}view:user_activity:u1") > 0
    product = cache.hgetall(f"{streams_env.cache_prefix}view:product_stats:p1")
    assert json.loads(product[HOUR.encode()])["views"] == 2
    assert cache.get(f"{streams_env.cache_prefix}profile:u2") is None

    # Job events: Avro on the job topics, keyed by the originating event_id.
    emails = streams_env.read_topic(f"{streams_env.jobs_prefix}jobs.email", 3)
    decoded = [streams_env.serde.decode(m.value()) for m in emails]
    by_key = {d["idempotency_key"]: d for d in decoded}
    assert len(decoded) == len(by_key) == 3  # welcome u1, receipt u1, welcome u2
    welcome_u1 = by_key[events[0]["event_id"]]
    assert (welcome_u1["template"], welcome_u1["to"]) == ("welcome", "ada@example.com")
    receipt = by_key[events[5]["event_id"]]
    assert (receipt["template"], receipt["to"]) == ("order_receipt", "ada@example.com")
    assert json.loads(receipt["data_json"])["order_id"] == "o-1"
    assert by_key[events[6]["event_id"]]["to"] == "bob@old.example"
    reports = streams_env.read_topic(f"{streams_env.jobs_prefix}jobs.report", 1)
    assert len(reports) == 1
    report = streams_env.serde.decode(reports[0].value())
    assert (report["kind"], report["to"], report["idempotency_key"]) == (
        "activity",
        "bob@new.example",
        events[8]["event_id"],
    )

    # Poison messages: in the dead-letter topic, with the error and where they came from.
    dead = streams_env.read_topic(streams_env.dlq, 2)
    assert sorted(m.value() for m in dead) == sorted(POISON)
    for message in dead:  # the core's dead-letter contract, so `keel dlq` reads and replays them
        letter = DeadLetter.of(message)
        assert letter.original_topic == streams_env.source
        assert int(letter.headers[H_ORIG_OFFSET]) >= 0
        assert letter.headers[H_ORIG_PARTITION].isdigit()
        assert letter.reason == "undecodable"
        assert letter.error

    with urllib.request.urlopen(first.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "keel_streams_events_total" in text and "keel_streams_batch_seconds" in text
