"""A dead letter replayed more than once (another replay group, another tool) is applied once
by its processor within the dedup window; a replay that raised again is not recorded as
applied, so the letter stays replayable. Pure engine on a dict state."""

from __future__ import annotations

from keel.streams.dedup import replay_key
from keel.streams.engine import Engine
from keel.streams.events import Event
from keel.streams.processors.user_activity import UserActivity
from keel.streams.testing import DictState, event
from tests.streams.test_engine import Flaky, Stream, replay_of


def failed_once() -> tuple[Flaky, Stream, Event]:
    """flaky raised on `bad` (its letter is events.dlq/0@0); user_activity counted it."""
    flaky = Flaky()
    stream = Stream([flaky, UserActivity()])
    bad = event("page.viewed", user_id="u1", explode=True)
    stream.process([stream.raw(event("page.viewed", user_id="u1")), stream.raw(bad)])
    assert stream.value("flaky") == 1
    return flaky, stream, bad


def test_the_same_letter_replayed_twice_is_applied_once() -> None:
    flaky, stream, bad = failed_once()
    flaky.broken = False
    first = [stream.raw(bad, replay_of("flaky"))]
    assert stream.process(first).duplicates == 0
    assert stream.value("flaky") == 2

    # `keel dlq replay --group other`: the same letter again, at a new offset
    again = stream.process([stream.raw(bad, replay_of("flaky"))])
    assert again.duplicates == 1
    assert not again.jobs and not again.poison
    assert not again.writes
    assert stream.value("flaky") == 2
    assert stream.value("user_activity")["events"] == 2

    # A crash replay of the first copy (same offset) is still the message itself.
    crash = stream.engine.process(first, stream.state)
    assert crash.duplicates == 0 and not crash.writes and not crash.jobs
    assert stream.value("flaky") == 2


def test_two_copies_of_a_letter_in_one_batch_are_applied_once() -> None:
    flaky, stream, bad = failed_once()
    flaky.broken = False
    result = stream.process(
        [stream.raw(bad, replay_of("flaky")), stream.raw(bad, replay_of("flaky"))]
    )
    assert result.duplicates == 1
    assert [j.record["idempotency_key"] for j in result.jobs] == [bad.event_id]
    assert stream.value("flaky") == 2


def test_a_replay_that_raised_again_stays_replayable_and_then_counts_once() -> None:
    flaky, stream, bad = failed_once()
    # Replayed before the fix: raises again, a new letter (at the replay's offset, 2).
    raised = stream.process([stream.raw(bad, replay_of("flaky"))])
    [poison] = raised.poison
    assert (poison.reason, poison.processor, poison.raw.offset) == ("processor", "flaky", 2)
    assert raised.duplicates == 0
    assert stream.state.get("dedup", replay_key("flaky", bad.event_id)) is None
    assert stream.value("flaky") == 1

    flaky.broken = False
    # The first letter again (another replay group): applied now.
    counted = stream.process([stream.raw(bad, replay_of("flaky"))])
    assert counted.duplicates == 0 and not counted.poison
    assert stream.value("flaky") == 2
    # The letter of the failed replay is the same event for flaky: skipped, as is the first
    # letter once more.
    later = stream.process(
        [
            stream.raw(bad, replay_of("flaky", "events.dlq/0@1")),
            stream.raw(bad, replay_of("flaky")),
        ]
    )
    assert later.duplicates == 2 and not later.jobs
    assert stream.value("flaky") == 2
    assert stream.value("user_activity")["events"] == 2


def test_the_applied_replay_is_known_to_a_worker_that_takes_over() -> None:
    """Another engine on the state as the changelogs restore it (dedup entries included)."""
    flaky, stream, bad = failed_once()
    flaky.broken = False
    stream.process([stream.raw(bad, replay_of("flaky"))])
    restored = DictState()
    restored.put_all(
        {
            (table, key): value
            for table, rows in stream.state.tables.items()
            for key, value in rows.items()
        }
    )
    stream.state = restored
    stream.engine = Engine([flaky, UserActivity()], stream.engine.decode, stream.engine.window_ms)
    assert stream.process([stream.raw(bad, replay_of("flaky"))]).duplicates == 1
    assert stream.value("flaky") == 2


def test_a_replay_per_processor_does_not_skip_another_processors_replay() -> None:
    flaky, stream, bad = failed_once()
    flaky.broken = False
    stream.process([stream.raw(bad, replay_of("flaky"))])
    assert stream.state.get("dedup", replay_key("flaky", bad.event_id)) is not None
    # A letter of the same event for user_activity (it raised there in another deployment)
    other = stream.process([stream.raw(bad, replay_of("user_activity", "events.dlq/1@0"))])
    assert other.duplicates == 0
    assert stream.value("user_activity")["events"] == 3
    assert stream.value("flaky") == 2


def test_a_replay_outside_the_dedup_window_is_applied_again() -> None:
    flaky = Flaky()
    stream = Stream([flaky, UserActivity()], window_ms=3_600_000)
    bad = event("page.viewed", user_id="u1", explode=True)
    stream.process([stream.raw(bad)])
    flaky.broken = False
    ts = bad.occurred_at // 1000
    stream.process([stream.raw(bad, replay_of("flaky"), ts_ms=ts + 60_000)])
    stream.process([stream.raw(bad, replay_of("flaky"), ts_ms=ts + 120_000)])
    assert stream.value("flaky") == 1
    stream.process([stream.raw(bad, replay_of("flaky"), ts_ms=ts + 2 * 3_600_000)])
    assert stream.value("flaky") == 2


def test_ordinary_messages_write_no_replay_entries() -> None:
    stream = Stream([Flaky(), UserActivity()])
    stream.process([stream.raw(event("page.viewed", user_id="u1")) for _ in range(3)])
    assert not [key for key in stream.state.tables["dedup"] if key.startswith("replay:")]
