"""Events sent over HTTP are on Kafka, where confluent-kafka's AvroDeserializer reads them
back with every field intact."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.producers.conftest import post


def order(user: str = "u-42", **over: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "order.placed",
        "user_id": user,
        "occurred_at": "2026-11-28T08:00:00.123456+00:00",
        "context": {"session_id": "s-1"},
        "order_id": "o-1",
        "items": [
            {"product_id": "p-1", "quantity": 2, "unit_price": "9.99"},
            {"product_id": "p-2", "quantity": 1, "unit_price": 100},
        ],
        "total": "119.98",
        "currency": "EUR",
        **over,
    }


def test_single_event_roundtrip(
    ingest_url: str, api_key: str, topic_reader: Callable[..., Any]
) -> None:
    event = order()
    status, _, body = post(ingest_url, event, api_key)
    assert status == 202, body
    assert body["event_id"] == event["event_id"]
    assert body["topic"].endswith("events")
    [(partition, offset, key, value)] = topic_reader(expect=1)
    assert (partition, offset) == (body["partition"], body["offset"])
    assert key == b"u-42"
    assert str(value["event_id"]) == event["event_id"]
    assert value["type"] == "order.placed"
    assert value["user_id"] == "u-42"
    assert value["occurred_at"] == datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)
    assert value["source"] == "test-shop"
    assert value["context"]["session_id"] == "s-1"
    assert value["context"]["ip"] == "127.0.0.1"
    assert value["context"]["user_agent"].startswith("Python-urllib")
    assert abs((datetime.now(UTC) - value["received_at"]).total_seconds()) < 60
    assert value["order_id"] == "o-1"
    assert value["items"] == [
        {"product_id": "p-1", "quantity": 2, "unit_price": Decimal("9.99")},
        {"product_id": "p-2", "quantity": 1, "unit_price": Decimal("100.00")},
    ]
    assert value["total"] == Decimal("119.98")
    assert value["currency"] == "EUR"


def test_batch_roundtrip_every_type(
    ingest_url: str, api_key: str, topic_reader: Callable[..., Any]
) -> None:
    events = [
        {"type": "user.signed_up", "user_id": "u-1", "email": "a@example.com", "name": None,
         "plan": "pro", "referrer": None},
        {"type": "page.viewed", "user_id": "u-1", "url": "https://x/", "path": "/", "title": None,
         "referrer": "https://google/"},
        {"type": "product.viewed", "user_id": "u-2", "product_id": "p", "category": "c",
         "price": "1.50", "currency": "EUR"},
        {"type": "cart.item_added", "user_id": "u-2", "product_id": "p", "quantity": 3,
         "unit_price": "0.01", "currency": "USD"},
        order("u-3"),
        {"type": "track", "user_id": "u-3", "name": "clicked",
         "properties": {"a": "x", "b": 2, "c": 1.5, "d": True, "e": None}},
        {"type": "report.requested", "user_id": "u-4", "kind": "orders",
         "period_start": "2026-01-01T00:00:00Z", "period_end": "2026-02-01T00:00:00Z"},
        {"type": "user.profile_updated", "user_id": "u-4", "email": None, "name": "N",
         "changed_fields": ["name"]},
    ]  # fmt: skip
    status, _, body = post(ingest_url, {"events": events}, api_key)
    assert status == 202, body
    assert body["accepted"] == len(events) and body["rejected"] == 0
    by_id = {r["event_id"]: r for r in body["results"]}
    records = topic_reader(expect=len(events))
    assert len(records) == len(events)
    for partition, offset, key, value in records:
        result = by_id[str(value["event_id"])]
        assert (result["partition"], result["offset"]) == (partition, offset)
        sent = events[result["index"]]
        assert key == sent["user_id"].encode()
        for name, expected in sent.items():
            if name in ("event_id", "occurred_at"):
                continue
            if name == "context":
                assert got_context_has(value[name], expected)
                continue
            got = value[name]
            if isinstance(got, Decimal):
                assert got == Decimal(str(expected))
            elif isinstance(got, datetime):
                assert got == datetime.fromisoformat(expected.replace("Z", "+00:00"))
            elif name == "items":
                assert [i["product_id"] for i in got] == [i["product_id"] for i in expected]
            else:
                assert got == expected, name
    # One user's events are in one partition, in the order sent.
    u1 = [(p, o, v["type"]) for p, o, _k, v in records if v["user_id"] == "u-1"]
    assert len({p for p, _, _ in u1}) == 1
    assert [t for _, _, t in sorted(u1)] == ["user.signed_up", "page.viewed"]


def test_partial_batch_207_writes_only_valid(
    ingest_url: str, api_key: str, topic_reader: Callable[..., Any]
) -> None:
    good = order("u-9")
    bad = order("u-9")
    del bad["user_id"]
    bad2 = {**order(), "total": "abc"}
    status, _, body = post(ingest_url, {"events": [bad, good, bad2]}, api_key)
    assert status == 207, body
    assert body["accepted"] == 1 and body["rejected"] == 2
    assert body["results"][0] == {
        "index": 0, "status": "rejected",
        "errors": [{"index": 0, "field": "user_id", "error": "required"}],
    }  # fmt: skip
    assert body["results"][1]["status"] == "accepted"
    assert body["results"][2]["errors"][0]["field"] == "total"
    records = topic_reader()
    assert [str(v["event_id"]) for *_, v in records] == [good["event_id"]]


def got_context_has(got: dict[str, Any], sent: dict[str, Any]) -> bool:
    """The client's context fields are kept; the server adds ip and user agent."""
    return all(got[k] == v for k, v in sent.items()) and got["ip"] == "127.0.0.1"
