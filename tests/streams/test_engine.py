"""The batch engine on plain values: dedup by event_id, replay watermarks, poison, batching."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from keel.deadletters import H_PROCESSOR, H_REPLAY_PROCESSOR, H_REPLAYED_FROM
from keel.streams.engine import Engine, Raw
from keel.streams.events import Event
from keel.streams.processor import KeyedView, Output, Trigger, View
from keel.streams.processors.job_triggers import JobTriggers
from keel.streams.processors.product_stats import ProductStats
from keel.streams.processors.user_activity import UserActivity
from keel.streams.testing import DictState, event, run

HOUR = 3_600_000_000
T0 = 1_764_316_800_000_000  # 2025-11-28T08:00:00Z


class Boom(View):
    name = "boom"

    def initial(self) -> int:
        return 0

    def apply(self, state: int, ev: Event) -> int:
        if ev.get("explode"):
            raise ValueError("boom on purpose")
        return state + 1


def test_duplicate_event_id_is_counted_once() -> None:
    a = event("page.viewed", user_id="u1")
    b = event("page.viewed", user_id="u1")
    result = run([UserActivity()], [a, b, a, a])
    view = result.view("user_activity", "u1")
    assert view["counts"] == {"page.viewed": 2}
    assert sum(r.duplicates for r in result.results) == 2


def test_duplicate_across_batches_is_counted_once() -> None:
    a = event("page.viewed", user_id="u1")
    events = [a] + [event("page.viewed", user_id="u1") for _ in range(5)] + [a]
    result = run([UserActivity()], events, batch=2)
    assert result.view("user_activity", "u1")["events"] == 6


def test_duplicate_outside_the_window_counts_again() -> None:
    a = event("page.viewed", user_id="u1", occurred_at=T0)
    late = Event.from_record({**a.data, "occurred_at": T0 + 10 * HOUR})
    # testing.run stamps each message with occurred_at as its Kafka timestamp
    result = run([UserActivity()], [a, late], dedup_window_ms=3_600_000)
    assert result.view("user_activity", "u1")["events"] == 2


def test_replayed_batch_after_a_crash_changes_nothing() -> None:
    """State written, offsets not committed: the same messages come back at the same offsets."""
    events = [event("page.viewed", user_id=f"u{i % 3}") for i in range(12)]
    state = DictState()
    first = run([UserActivity()], events, state=state)
    before = {u: first.view("user_activity", u) for u in ("u0", "u1", "u2")}
    again = run([UserActivity()], events, state=state)
    assert {u: again.view("user_activity", u) for u in ("u0", "u1", "u2")} == before
    assert sum(r.duplicates for r in again.results) == 0  # a replay is not a duplicate
    assert all(not r.writes for r in again.results)  # nothing to write again


def test_replay_when_only_the_dedup_entries_survived() -> None:
    """The dedup changelog arrived, the view's did not: the replay must still count."""
    events = [event("page.viewed", user_id="u1") for _ in range(3)]
    state = DictState()
    run([UserActivity()], events, state=state)
    state.tables.pop("user_activity")
    again = run([UserActivity()], events, state=state)
    assert again.view("user_activity", "u1")["events"] == 3


def test_each_key_is_written_once_per_batch() -> None:
    events = [event("page.viewed", user_id=f"u{i % 4}") for i in range(100)]
    result = run([UserActivity()], events, batch=100)
    writes = result.results[0].writes
    assert len([k for k in writes if k[0] == "user_activity"]) == 4


def test_undecodable_message_is_poison_and_the_rest_goes_on() -> None:
    good = event("page.viewed", user_id="u1")

    def decode(data: bytes) -> dict[str, Any]:
        if data == b"garbage":
            raise ValueError("not Avro")
        return dict(good.data)

    engine = Engine([UserActivity()], decode, 1000)
    state = DictState()
    result = engine.process([Raw(b"garbage", 0, 0), Raw(b"x", 0, 1), Raw(None, 0, 2)], state)
    assert [(p.reason, p.raw.offset) for p in result.poison] == [
        ("undecodable", 0),
        ("undecodable", 2),
    ]
    assert "not Avro" in result.poison[0].error
    assert len(result.events) == 1


def test_a_processor_that_raises_sends_the_event_to_poison_and_others_still_count() -> None:
    ok = event("page.viewed", user_id="u1")
    bad = event("page.viewed", user_id="u1", explode=True)
    result = run([Boom(), UserActivity()], [ok, bad, event("page.viewed", user_id="u1")])
    poison = [p for r in result.results for p in r.poison]
    assert [(p.reason, p.processor, p.raw.offset) for p in poison] == [("processor", "boom", 1)]
    assert result.view("boom", "u1") == 2
    assert result.view("user_activity", "u1")["events"] == 3


def test_user_activity_orders_and_lifetime_value() -> None:
    events = [
        event("user.signed_up", user_id="u1", occurred_at=T0, email="a@example.com"),
        event(
            "order.placed",
            user_id="u1",
            occurred_at=T0 + HOUR,
            total=Decimal("10.25"),
            currency="EUR",
            items=[],
        ),
        event(
            "order.placed",
            user_id="u1",
            occurred_at=T0 - HOUR,
            total=Decimal("0.75"),
            currency="EUR",
            items=[],
        ),
    ]
    view = run([UserActivity()], events).view("user_activity", "u1")
    assert view["orders"] == 2
    assert view["lifetime_value"] == {"EUR": "11.00"}
    assert view["first_seen"] == "2025-11-28T07:00:00Z"
    assert view["last_seen"] == "2025-11-28T09:00:00Z"
    assert view["counts"] == {"user.signed_up": 1, "order.placed": 2}


def test_product_stats_hourly_windows_and_conversion() -> None:
    events = [
        event("product.viewed", user_id="u1", occurred_at=T0 + 1, product_id="p1"),
        event("product.viewed", user_id="u2", occurred_at=T0 + 2, product_id="p1"),
        event("cart.item_added", user_id="u2", occurred_at=T0 + 3, product_id="p1"),
        event(
            "order.placed",
            user_id="u2",
            occurred_at=T0 + 4,
            items=[{"product_id": "p1"}, {"product_id": "p1"}, {"product_id": "p2"}],
        ),
        event("product.viewed", user_id="u1", occurred_at=T0 + HOUR, product_id="p1"),
    ]
    result = run([ProductStats()], events)
    hour0 = result.view("product_stats", "p1", {"window": "2025-11-28T08:30:00Z"})
    assert hour0 == {
        "window_start": "2025-11-28T08:00:00Z",
        "views": 2,
        "cart_adds": 1,
        "orders": 1,
        "conversion_rate": 0.5,
    }
    assert len(result.view("product_stats", "p1")["windows"]) == 2
    assert result.view("product_stats", "p2", {"window": "2025-11-28T08:00:00Z"})["orders"] == 1


def test_product_stats_expires_old_windows() -> None:
    stats = ProductStats()
    stats.retention = 3
    events = [
        event("product.viewed", user_id="u1", occurred_at=T0 + h * HOUR, product_id="p1")
        for h in range(6)
    ]
    late = event("product.viewed", user_id="u1", occurred_at=T0, product_id="p1")
    result = run([stats], [*events, late])
    windows = result.view("product_stats", "p1")["windows"]
    assert [w["window_start"] for w in windows] == [
        "2025-11-28T11:00:00Z",
        "2025-11-28T12:00:00Z",
        "2025-11-28T13:00:00Z",
    ]
    with pytest.raises(KeyError):
        result.view("product_stats", "p1", {"window": "2025-11-28T08:00:00Z"})


def test_rekeyed_deltas_delivered_twice_are_folded_once() -> None:
    events = [event("product.viewed", user_id="u1", occurred_at=T0, product_id="p1")]
    state = DictState()
    result = run([ProductStats()], events, state=state)
    engine = Engine([ProductStats()], lambda b: {}, 1000)
    deltas = result.results[0].deltas["product_stats"]
    engine_result = engine.fold("product_stats", deltas + deltas, state)
    assert not engine_result.writes
    assert result.view("product_stats", "p1")["windows"][0]["views"] == 1


def test_active_users_distinct_per_minute_hour_day() -> None:
    from keel.streams.processors.active_users import ActiveUsers

    events = [
        event("page.viewed", user_id="u1", occurred_at=T0 + 1),
        event("page.viewed", user_id="u1", occurred_at=T0 + 2),
        event("page.viewed", user_id="u2", occurred_at=T0 + 3),
        event("page.viewed", user_id="u1", occurred_at=T0 + 61_000_000),
    ]
    result = run([ActiveUsers()], events)
    minute = result.view("active_users", "minute", {"window": "2025-11-28T08:00:00Z"})
    assert minute["users"] == 2
    assert result.view("active_users", "minute", {"window": "2025-11-28T08:01:30Z"})["users"] == 1
    assert result.view("active_users", "hour", {"window": "2025-11-28T08:00:00Z"})["users"] == 2
    assert result.view("active_users", "day", {"window": "2025-11-28"})["users"] == 2


def test_job_triggers_welcome_receipt_report_with_the_users_address() -> None:
    su = event("user.signed_up", user_id="u1", email="old@example.com", name="Ada")
    pu = event("user.profile_updated", user_id="u1", email="new@example.com")
    order = event(
        "order.placed",
        user_id="u1",
        order_id="o1",
        total=Decimal("5.00"),
        currency="EUR",
        items=[{"product_id": "p1", "quantity": 1}],
    )
    report = event(
        "report.requested",
        user_id="u1",
        kind="activity",
        period_start=T0,
        period_end=T0 + 24 * HOUR,
    )
    result = run([JobTriggers()], [su, pu, order, order, report])
    jobs = [(j.job_type, j.record.get("template"), j.record["to"]) for j in result.jobs]
    assert jobs == [
        ("job.email", "welcome", "old@example.com"),
        ("job.email", "order_receipt", "new@example.com"),
        ("job.report", None, "new@example.com"),
    ]
    assert [j.record["idempotency_key"] for j in result.jobs] == [
        su.event_id,
        order.event_id,
        report.event_id,
    ]
    assert result.jobs[2].record["period_start"] == T0


def test_jobs_are_not_emitted_again_on_replay() -> None:
    state = DictState()
    order = event("order.placed", user_id="u1", total=Decimal("1"), currency="EUR", items=[])
    run([JobTriggers()], [order], state=state)
    again = run([JobTriggers()], [order], state=state)
    assert again.jobs == []


class Counter(Trigger):
    name = "counter"

    def fire(self, state: Any, ev: Event, out: Output) -> Any:
        return (state or 0) + 1


def test_outputs_of_an_event_are_collected_per_processor() -> None:
    result = run([Counter()], [event("track", user_id="u1"), event("track", user_id="u2")])
    assert result.view("counter", "u1") == 1


# -- replayed dead letters of a processor that raised -----------------------------------------
class Flaky(Trigger):
    """Counts per user and emits a job per event; raises on `explode` while `broken`."""

    name = "flaky"

    def __init__(self) -> None:
        self.broken = True

    def fire(self, state: Any, ev: Event, out: Output) -> Any:
        if self.broken and ev.get("explode"):
            raise ValueError("flaky on purpose")
        out.job("job.email", {"idempotency_key": ev.event_id})
        return (state or 0) + 1


def replay_of(processor: str | None, letter: str = "events.dlq/0@0") -> list[tuple[str, bytes]]:
    """The headers `keel dlq replay` gives a letter (see keel.deadletters.replay_headers)."""
    headers = [(H_REPLAYED_FROM, letter.encode())]
    if processor is not None:
        headers.append((H_REPLAY_PROCESSOR, processor.encode()))
    return headers


class Stream:
    """One partition of the source topic: offsets in order, a DictState, an engine."""

    def __init__(self, processors: list[Any], window_ms: int = 86_400_000) -> None:
        self.by_id: dict[str, Event] = {}
        self.engine = Engine(
            processors, lambda data: dict(self.by_id[data.decode()].data), window_ms
        )
        self.state = DictState()
        self.offset = 0

    def raw(self, ev: Event, headers: Any = None, ts_ms: int | None = None) -> Raw:
        self.by_id[ev.event_id] = ev
        raw = Raw(ev.event_id.encode(), 0, self.offset, ts_ms or ev.occurred_at // 1000)
        raw.headers = headers
        self.offset += 1
        return raw

    def process(self, raws: list[Raw]) -> Any:
        result = self.engine.process(raws, self.state)
        self.state.put_all(result.writes)
        for name, deltas in result.deltas.items():
            self.state.put_all(self.engine.fold(name, deltas, self.state).writes)
        return result

    def value(self, table: str, key: str = "u1") -> Any:
        stored = self.state.get(table, key)
        return None if stored is None else stored[1]


def test_a_replayed_letter_reaches_the_failed_processor_only_and_once() -> None:
    flaky, activity = Flaky(), UserActivity()
    stream = Stream([flaky, activity])
    ok = event("page.viewed", user_id="u1")
    bad = event("page.viewed", user_id="u1", explode=True)
    first = stream.process([stream.raw(ok), stream.raw(bad)])
    [poison] = first.poison
    assert (poison.reason, poison.processor, poison.raw.offset) == ("processor", "flaky", 1)
    assert (stream.value("flaky"), stream.value("user_activity")["events"]) == (1, 2)
    dedup_before = dict(stream.state.tables["dedup"])

    flaky.broken = False  # the cause is fixed; `keel dlq replay` sends the letter back
    later = event("page.viewed", user_id="u1")
    batch = [stream.raw(bad, replay_of("flaky")), stream.raw(later)]
    replayed = stream.process(batch)
    assert stream.value("flaky") == 3  # ok, bad (replayed), later
    assert stream.value("user_activity")["events"] == 3  # bad counted once, the first time
    assert replayed.duplicates == 0 and not replayed.poison
    assert [(j.processor, j.record["idempotency_key"]) for j in replayed.jobs] == [
        ("flaky", bad.event_id),
        ("flaky", later.event_id),
    ]
    assert [ev.event_id for ev in replayed.events] == [later.event_id]  # sinks saw bad already
    # The original's dedup entry stays: a client retrying bad is still a duplicate.
    assert stream.state.tables["dedup"][bad.event_id] == dedup_before[bad.event_id]

    # A crash before the offsets were committed: the same messages at the same offsets.
    again = stream.engine.process(batch, stream.state)
    assert not again.writes and not again.jobs and not again.poison
    assert stream.value("flaky") == 3

    # Only a replay is routed: the processor header alone is a client's retry, dropped.
    retried = stream.process([stream.raw(bad, [(H_REPLAY_PROCESSOR, b"flaky")])])
    assert retried.duplicates == 1
    assert stream.value("flaky") == 3


class FlakyTotals(KeyedView):
    """Events per path across users (no per-user state); raises on `explode` while `broken`."""

    name = "totals"

    def __init__(self) -> None:
        self.broken = True

    def route(self, state: Any, ev: Event, out: Output) -> Any:
        if self.broken and ev.get("explode"):
            raise ValueError("totals on purpose")
        out.rekey(str(ev.get("path")), 1)
        return state

    def initial_aggregate(self) -> int:
        return 0

    def fold(self, aggregate: int, delta: int) -> int:
        return aggregate + delta


def test_a_replayed_letter_of_a_keyed_view_is_re_keyed_and_folded_once() -> None:
    totals = FlakyTotals()
    stream = Stream([totals, UserActivity()])
    bad = event("page.viewed", user_id="u1", path="/x", explode=True)
    stream.process([stream.raw(event("page.viewed", user_id="u2", path="/x")), stream.raw(bad)])
    assert stream.state.get("totals", "/x")["v"] == 1
    totals.broken = False
    batch = [stream.raw(bad, replay_of("totals"))]
    replayed = stream.process(batch)
    assert [(key, msg["o"]) for key, msg in replayed.deltas["totals"]] == [("/x", [2, 0])]
    assert stream.state.get("totals", "/x")["v"] == 2
    stream.process(batch)  # a crash replay: the same delta again, folded once
    assert stream.state.get("totals", "/x")["v"] == 2
    assert stream.value("user_activity", "u1")["events"] == 1


def test_a_replayed_letter_after_the_dedup_window_is_not_counted_again_by_the_others() -> None:
    flaky, activity = Flaky(), UserActivity()
    stream = Stream([flaky, activity], window_ms=3_600_000)
    bad = event("page.viewed", user_id="u1", explode=True)
    stream.process([stream.raw(bad)])
    flaky.broken = False
    a_day_later = bad.occurred_at // 1000 + 86_400_000
    stream.process([stream.raw(bad, replay_of("flaky"), ts_ms=a_day_later)])
    assert stream.value("flaky") == 1
    assert stream.value("user_activity")["events"] == 1


def test_a_replayed_letter_for_an_unknown_processor_is_dead_lettered_again_naming_it() -> None:
    stream = Stream([UserActivity()])
    ev = event("page.viewed", user_id="u1")
    stream.process([stream.raw(ev)])
    result = stream.process([stream.raw(ev, replay_of("gone_since"))])
    [poison] = result.poison
    assert (poison.reason, poison.processor, poison.raw.offset) == (
        "unknown_processor",
        "gone_since",
        1,
    )
    assert "'gone_since'" in poison.error and "user_activity" in poison.error
    assert stream.value("user_activity")["events"] == 1
    assert not result.writes


def test_a_replayed_undecodable_letter_goes_through_every_processor() -> None:
    """An undecodable letter names no processor, and no processor counted it."""
    flaky, activity = Flaky(), UserActivity()
    stream = Stream([flaky, activity])
    ev = event("page.viewed", user_id="u1")
    stream.process([stream.raw(ev, replay_of(None))])
    assert (stream.value("flaky"), stream.value("user_activity")["events"]) == (1, 1)
    # Mappings of headers (as Faust also hands them over) are read the same way.
    other = event("page.viewed", user_id="u1")
    headers = {H_REPLAYED_FROM: b"events.dlq/0@1", H_PROCESSOR: b"ignored"}
    stream.process([stream.raw(other, headers)])
    assert (stream.value("flaky"), stream.value("user_activity")["events"]) == (2, 2)
