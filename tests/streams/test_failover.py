"""Exactness under failure: three workers, one SIGKILLed mid-stream and another added; after
the stream drains every view equals the figures computed independently from the events
sent, each event_id counted once although clients sent some twice."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv

USERS = [f"user-{i}" for i in range(40)]
PRODUCTS = [f"sku-{i}" for i in range(8)]
BASE_HOUR = 8


def make_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        user = rng.choice(USERS)
        hour = BASE_HOUR + rng.randrange(2)
        when = f"2026-11-28T{hour:02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
        kind = rng.choice(["page", "product", "product", "cart", "order"])
        base = {"event_id": str(uuid.uuid4()), "user_id": user, "occurred_at": when}
        product = rng.choice(PRODUCTS)
        if kind == "page":
            events.append(
                {
                    **base,
                    "type": "page.viewed",
                    "url": "https://s.example/",
                    "path": "/",
                    "title": None,
                    "referrer": None,
                }
            )
        elif kind == "product":
            events.append(
                {**base, "type": "product.viewed", "product_id": product, "currency": "EUR"}
            )
        elif kind == "cart":
            events.append(
                {
                    **base,
                    "type": "cart.item_added",
                    "product_id": product,
                    "quantity": 1,
                    "unit_price": "3.10",
                    "currency": "EUR",
                }
            )
        else:
            other = rng.choice(PRODUCTS)
            events.append(
                {
                    **base,
                    "type": "order.placed",
                    "order_id": str(uuid.uuid4()),
                    "currency": "EUR",
                    "total": f"{rng.randrange(100, 9999) / 100:.2f}",
                    "items": [
                        {"product_id": product, "quantity": 1, "unit_price": "1.00"},
                        {"product_id": other, "quantity": 2, "unit_price": "1.00"},
                    ],
                }
            )
    return events


def expected_views(
    events: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """The figures, computed without any of the code under test."""
    users: dict[str, Any] = {}
    for e in events:
        u = users.setdefault(e["user_id"], {"counts": Counter(), "orders": 0, "ltv": Decimal(0)})
        u["counts"][e["type"]] += 1
        if e["type"] == "order.placed":
            u["orders"] += 1
            u["ltv"] += Decimal(e["total"])
    products: dict[str, Any] = defaultdict(lambda: defaultdict(Counter))
    active: dict[str, set[str]] = defaultdict(set)
    for e in events:
        hour = e["occurred_at"][:13] + ":00:00Z"
        active[hour].add(e["user_id"])
        if e["type"] == "product.viewed":
            products[e["product_id"]][hour]["views"] += 1
        elif e["type"] == "cart.item_added":
            products[e["product_id"]][hour]["cart_adds"] += 1
        elif e["type"] == "order.placed":
            for pid in {i["product_id"] for i in e["items"]}:
                products[pid][hour]["orders"] += 1
    return users, products, {h: len(s) for h, s in active.items()}


@pytest.mark.slow
def test_kill_one_worker_add_another_views_stay_exact(streams_env: StreamsEnv) -> None:
    events = make_events(2400)
    rng = random.Random(11)
    resent = [dict(e) for e in rng.sample(events, 240)]  # clients retrying: same event_id
    stream = events + resent
    rng.shuffle(stream)
    poison = [f"poison-{i}".encode() for i in range(5)]

    workers = [streams_env.start_worker(wait=False) for _ in range(3)]
    for worker in workers:
        wait_for(worker.ready, 120, f"worker {worker.port} ready")

    third = len(stream) // 3
    streams_env.send(stream[:third], poison=poison[:2])
    # Let the victim get some of it into its tables, then kill it mid-stream.
    wait_for(
        lambda: (
            streams_env.view("user_activity", stream[0]["user_id"], worker=workers[1])[0] == 200
        ),
        60,
        "first events processed",
    )
    streams_env.send(stream[third : 2 * third], poison=poison[2:])
    workers[0].kill()
    newcomer = streams_env.start_worker(wait=False)
    streams_env.send(stream[2 * third :])
    statuses: list[int] = []

    def newcomer_ready() -> bool:
        status = newcomer.get("/readyz")[0]
        statuses.append(status)
        return status == 200

    wait_for(newcomer_ready, 120, "the added worker ready", interval=0.1)
    # It answered 503 (starting, rebalancing or recovering) before it answered 200.
    assert 503 in statuses, statuses

    users, products, active = expected_views(events)
    survivors = [workers[1], workers[2], newcomer]

    def user_view_exact(user: str) -> bool:
        status, body = streams_env.view("user_activity", user, worker=rng.choice(survivors))
        if status != 200:
            return False
        want = users[user]
        return (
            body["counts"] == dict(want["counts"])
            and body["orders"] == want["orders"]
            and Decimal(body["lifetime_value"].get("EUR", "0")) == want["ltv"]
        )

    wrong_users: list[Any] = []

    def all_users_exact() -> bool:
        wrong_users.clear()
        wrong_users.extend(u for u in users if not user_view_exact(u))
        return not wrong_users

    try:
        wait_for(all_users_exact, 180, "every user_activity view exact", interval=1.0)
    except AssertionError as exc:
        details = [(u, streams_env.view("user_activity", u), users[u]) for u in wrong_users[:3]]
        raise AssertionError(f"{exc}: {len(wrong_users)} wrong, e.g. {details}") from None

    mismatches: list[Any] = []

    def products_exact() -> bool:
        mismatches.clear()
        for pid, hours in products.items():
            for hour, counts in hours.items():
                status, body = streams_env.view(
                    "product_stats", pid, worker=rng.choice(survivors), window=hour
                )
                want = {k: counts.get(k, 0) for k in ("views", "cart_adds", "orders")}
                got = {k: body[k] for k in want} if status == 200 else (status, body)
                if got != want:
                    mismatches.append((pid, hour, got, want))
        return not mismatches

    try:
        wait_for(products_exact, 120, "every product_stats window exact", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {mismatches[:5]}") from None

    def active_exact() -> bool:
        for hour, count in active.items():
            status, body = streams_env.view("active_users", "hour", window=hour)
            if status != 200 or body["users"] != count:
                return False
        return True

    wait_for(active_exact, 60, "active users per hour exact", interval=1.0)

    # Every poison message is in the dead-letter topic (at least once; never lost).
    dead = streams_env.read_topic(streams_env.dlq, len(poison))
    assert {m.value() for m in dead} == set(poison)
