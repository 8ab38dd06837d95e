"""Processors through a worker's real Faust agents, in Faust's own test context (no broker):
the same views, jobs, dedup and dead letters as the engine alone (`keel.streams.testing.run`)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from keel.deadletters import H_PROCESSOR, H_REASON, DeadLetter, replay_headers
from keel.streams.events import Event
from keel.streams.processor import View
from keel.streams.processors.job_triggers import JobTriggers
from keel.streams.processors.product_stats import ProductStats
from keel.streams.processors.user_activity import UserActivity
from keel.streams.testing import event, faust_context, faust_run, run

HOUR = 3_600_000_000
T0 = 1_764_316_800_000_000  # 2025-11-28T08:00:00Z


def page(user: str, at: int = T0) -> dict[str, object]:
    return dict(
        event("page.viewed", user_id=user, occurred_at=at, url="https://x/p", path="/p").data
    )


def test_user_activity_through_fausts_test_context(tmp_path: Path) -> None:
    a = page("u1", T0)
    events = [
        event("user.signed_up", user_id="u1", occurred_at=T0 - HOUR, email="a@example.com").data,
        a,
        page("u1", T0 + HOUR),
        a,  # sent twice by the client: counted once
        event(
            "order.placed",
            user_id="u1",
            occurred_at=T0,
            order_id="o1",
            items=[],
            total=Decimal("10.25"),
            currency="EUR",
        ).data,
        page("u2"),
    ]
    result = faust_run([UserActivity()], events, tmp_path)
    view = result.view("user_activity", "u1")
    assert view["counts"] == {"user.signed_up": 1, "page.viewed": 2, "order.placed": 1}
    assert view["events"] == 4
    assert view["lifetime_value"] == {"EUR": "10.25"}
    assert (view["first_seen"], view["last_seen"]) == (
        "2025-11-28T07:00:00Z",
        "2025-11-28T09:00:00Z",
    )
    assert result.view("user_activity", "u2")["events"] == 1
    assert result.view("user_activity", "nobody") is None
    # The engine alone says the same.
    alone = run([UserActivity()], [event(str(e["type"]), **e) for e in map(dict, events)])
    assert alone.view("user_activity", "u1") == view
    # One changelog record per key per batch, and none to a dead-letter topic.
    assert result.records(result.app.changelog_topic_name("user_activity"))
    assert not result.dead_letters()


def test_duplicates_across_batches_and_poison_in_fausts_test_context(tmp_path: Path) -> None:
    first = page("u1")

    async def go() -> None:
        async with faust_context([UserActivity()], tmp_path) as ctx:
            await ctx.send(first, page("u1"))
            await ctx.send(b"\x00\x00\x00\x00", first, page("u1"), key="u1")
            assert ctx.view("user_activity", "u1")["events"] == 3
            [dead] = ctx.dead_letters()
            headers = dict(dead.headers or [])
            assert headers[H_REASON] == b"undecodable"
            assert headers["keel.error.class"].startswith(b"keel.schemas.errors.")
            assert dead.value == b"\x00\x00\x00\x00"

    asyncio.run(go())


def test_product_stats_through_source_and_fold_agents(tmp_path: Path) -> None:
    def viewed(user: str, product: str, at: int) -> dict[str, object]:
        return dict(event("product.viewed", user_id=user, occurred_at=at, product_id=product).data)

    events = [
        viewed("u1", "p1", T0 + 1),
        viewed("u2", "p1", T0 + 2),
        event(
            "cart.item_added",
            user_id="u2",
            occurred_at=T0 + 3,
            product_id="p1",
            quantity=1,
            unit_price=Decimal("2.50"),
        ).data,
        viewed("u1", "p1", T0 + HOUR),
    ]
    result = faust_run([ProductStats()], events, tmp_path)
    hour0 = result.view("product_stats", "p1", {"window": "2025-11-28T08:30:00Z"})
    assert hour0 == {
        "window_start": "2025-11-28T08:00:00Z",
        "views": 2,
        "cart_adds": 1,
        "orders": 0,
        "conversion_rate": 0.0,
    }
    assert len(result.view("product_stats", "p1")["windows"]) == 2


def test_job_triggers_emit_avro_job_events_in_fausts_test_context(tmp_path: Path) -> None:
    signed_up = event("user.signed_up", user_id="u1", email="ada@example.com", name="Ada").data
    result = faust_run([JobTriggers()], [signed_up, signed_up], tmp_path)
    [job] = result.jobs("job.email")
    assert job["template"] == "welcome"
    assert job["to"] == "ada@example.com"
    assert job["idempotency_key"] == signed_up["event_id"]


class HalfwayBoom(View):
    """Changes its state, then raises for one path: a processor bug halfway through."""

    name = "halfway"

    def initial(self) -> dict[str, int]:
        return {"n": 0}

    def apply(self, state: dict[str, int], ev: Event) -> dict[str, int]:
        state["n"] += 1
        if ev.get("path") == "/boom":
            raise ValueError("boom on purpose")
        return state


def test_a_processor_that_raises_halfway_leaves_no_trace_in_later_batches(tmp_path: Path) -> None:
    """The worker remembers the values it wrote; a value a processor changed before raising
    must not be remembered as if it were stored."""
    boom = dict(
        event("page.viewed", user_id="u1", url="https://x/b", path="/boom", occurred_at=T0).data
    )

    async def go() -> None:
        async with faust_context([HalfwayBoom()], tmp_path) as ctx:
            await ctx.send(page("u1"))
            await ctx.send(boom)
            await ctx.send(page("u1"))
            assert ctx.view("halfway", "u1") == {"n": 2}
            [dead] = ctx.dead_letters()
            assert dict(dead.headers or [])["keel.processor"] == b"halfway"

    asyncio.run(go())


class Fussy(View):
    """Counts a user's events; raises on one path while `broken`."""

    name = "fussy"

    def __init__(self) -> None:
        self.broken = True

    def initial(self) -> int:
        return 0

    def apply(self, state: int, ev: Event) -> int:
        if self.broken and ev.get("path") == "/boom":
            raise ValueError("fussy on purpose")
        return state + 1


def test_a_replayed_dead_letter_reaches_the_processor_that_raised_only(tmp_path: Path) -> None:
    """The worker hands a message's headers to the engine: the replay of a processor's dead
    letter (headers as `keel dlq replay` writes them) is applied by that processor alone,
    although its event_id is within the dedup window."""
    boom = dict(
        event("page.viewed", user_id="u1", url="https://x/b", path="/boom", occurred_at=T0).data
    )
    fussy = Fussy()

    async def go() -> None:
        async with faust_context([fussy, UserActivity()], tmp_path) as ctx:
            await ctx.send(page("u1"), boom)
            [dead] = ctx.dead_letters()
            headers = dict(dead.headers or [])
            assert (headers[H_REASON], headers[H_PROCESSOR]) == (b"processor", b"fussy")
            assert headers["keel.error.class"] == b"builtins.ValueError"
            assert (ctx.view("fussy", "u1"), ctx.view("user_activity", "u1")["events"]) == (1, 2)

            fussy.broken = False
            letter = DeadLetter(
                "events.dlq",
                0,
                0,
                dead.key,
                dead.value or b"",
                {k: v.decode() for k, v in headers.items()},
            )
            replay = [(k, str(v).encode()) for k, v in replay_headers(letter)]
            await ctx.send(boom, headers=replay)  # at its first timestamp: within the window
            assert ctx.view("fussy", "u1") == 2
            assert ctx.view("user_activity", "u1")["events"] == 2
            assert len(ctx.dead_letters()) == 1

    asyncio.run(go())
