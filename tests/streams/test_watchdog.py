"""The stalled-partition watchdog: the detector on plain values (what counts as stuck and
what does not), then wired into a worker against the real broker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from keel.lag import group_lag
from keel.local.ports import free_port
from keel.settings import KeelSettings
from keel.streams.app import StreamsApp
from keel.streams.cli import build
from keel.streams.watchdog import Stall, StallDetector
from tests.polling import wait_for
from tests.processes import http_get
from tests.streams.conftest import StreamsEnv

TP0, TP1 = ("events", 0), ("events", 1)


def test_a_partition_with_messages_waiting_and_no_progress_stalls_after_the_timeout() -> None:
    d = StallDetector(120)
    assert d.observe(0, {TP0: (10, 50)}) == []
    assert d.observe(119.9, {TP0: (10, 50)}) == []
    assert d.observe(120, {TP0: (10, 50)}) == [Stall("events", 0, 10, 50, 120)]
    # the highwater keeps growing: still the same stall, still counted from the start
    assert d.observe(200, {TP0: (10, 80)}) == [Stall("events", 0, 10, 80, 200)]


def test_an_idle_partition_with_nothing_waiting_is_never_stalled() -> None:
    d = StallDetector(10)
    for now in range(0, 1000, 7):
        assert d.observe(now, {TP0: (42, 42)}) == []


def test_nothing_waiting_any_more_without_moving_is_not_a_stall() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 50)})
    # e.g. the end offset refreshed lower than a stale one: nothing is waiting, not stuck
    assert d.observe(10, {TP0: (10, 10)}) == []
    assert d.observe(30, {TP0: (10, 10)}) == []


def test_messages_arriving_at_an_idle_partition_start_the_clock_then() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (42, 42)})
    assert d.observe(500, {TP0: (42, 43)}) == []  # idle for ages, but waiting only since now
    assert d.observe(509, {TP0: (42, 43)}) == []
    assert [s.partition for s in d.observe(510, {TP0: (42, 43)})] == [0]


def test_progress_resets_the_clock() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(9, {TP0: (11, 100)}) == []  # moved by one
    assert d.observe(18, {TP0: (11, 100)}) == []
    assert d.observe(19, {TP0: (11, 100)})[0].seconds == 10


def test_rebalancing_or_recovering_pauses_the_clock_and_it_restarts_after() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(9, {TP0: (10, 100)}, paused=True) == []
    assert d.observe(30, {TP0: (10, 100)}, paused=True) == []
    assert d.observe(39, {TP0: (10, 100)}) == []  # the clock restarted at 30
    assert d.observe(40, {TP0: (10, 100)})[0].seconds == 10


def test_a_partition_no_longer_assigned_is_forgotten() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100), TP1: (5, 100)})
    assert [s.partition for s in d.observe(10, {TP0: (10, 100), TP1: (5, 100)})] == [0, 1]
    assert [s.partition for s in d.observe(11, {TP0: (10, 100)})] == [0]
    # assigned again later (same position, e.g. back from another worker): a fresh clock
    assert [s.partition for s in d.observe(12, {TP0: (10, 100), TP1: (5, 100)})] == [0]
    assert [s.partition for s in d.observe(22, {TP0: (10, 100), TP1: (5, 100)})] == [0, 1]


def test_each_stall_is_reported_once_and_again_after_it_cleared() -> None:
    d = StallDetector(10)
    d.observe(0, {TP0: (10, 100)})
    first = d.observe(10, {TP0: (10, 100)})
    assert d.newly_reported(first) == first
    assert d.newly_reported(d.observe(11, {TP0: (10, 100)})) == []
    assert d.observe(12, {TP0: (20, 100)}) == []  # moved: cleared
    again = d.observe(22, {TP0: (20, 100)})
    assert [s.position for s in d.newly_reported(again)] == [20]


def test_zero_disables_and_a_negative_timeout_is_refused() -> None:
    d = StallDetector(0)
    assert not d.enabled
    d.observe(0, {TP0: (10, 100)})
    assert d.observe(10_000, {TP0: (10, 100)}) == []
    with pytest.raises(ValueError, match="stall timeout"):
        StallDetector(-1)


def test_the_stall_as_healthz_names_it() -> None:
    assert Stall("events", 3, 7, 9, 12.345).as_dict() == {
        "topic": "events",
        "partition": 3,
        "position": 7,
        "highwater": 9,
        "stuck_s": 12.3,
    }


# -- wired into a real worker, against the real broker -------------------------------------
#
# No outside cause stalls one partition of a `keel streams worker` process alone (a blocking
# processor blocks them all, a test-only hook would test the hook), so this runs the worker's
# app in-process and stalls one partition for real with Faust's own
# `consumer.pause_partitions`: the consumer stops fetching it while the broker keeps taking
# messages for it, as in faust#629 (and with aiokafka's `pause`, which stops fetching it).

STALL_TIMEOUT_S = 4


class InProcessWorker:
    """A StreamsApp running on its own event loop in a thread (the test polls over HTTP)."""

    def __init__(self, settings: KeelSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.built: concurrent.futures.Future[StreamsApp] = concurrent.futures.Future()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="in-process worker", daemon=True)
        self.stopping: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test, which fails naming it
            self.failed = exc
            if not self.built.done():
                self.built.set_exception(exc)

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        app = build(self.settings)
        assert isinstance(app, StreamsApp)
        self.built.set_result(app)
        await app.app.start()
        try:
            await self.stopping.wait()
        finally:
            await app.app.stop()
            # Faust's stop flushed it; without this its librdkafka client outlives the
            # test (the closure StreamsApp puts on Faust's producer keeps it referenced).
            app.kafka.close()

    def start(self) -> StreamsApp:
        self.thread.start()
        return self.built.result(timeout=60)

    def call(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the app's loop (Faust's consumer is not thread-safe)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn(*args)
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        done.result(timeout=10)

    def stop(self) -> None:
        if self.stopping is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(60)


def _get(url: str) -> tuple[int, Any]:
    status, body = http_get(url)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _events(users: int, per_user: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "type": "page.viewed",
            "user_id": f"u{u}",
            "occurred_at": "2026-11-28T08:00:00Z",
            "url": "https://shop.example/",
            "path": "/",
            "title": None,
            "referrer": None,
        }
        for _ in range(per_user)
        for u in range(users)
    ]


@pytest.fixture
def worker(
    streams_env: StreamsEnv, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[InProcessWorker, StreamsApp, str]]:
    for name, value in streams_env.env.items():
        if name.startswith("KEEL_"):
            monkeypatch.setenv(name, value)
    port = free_port()
    monkeypatch.setenv("KEEL_STREAMS_WEB_PORT", str(port))
    monkeypatch.setenv("KEEL_STREAMS_STALL_TIMEOUT_S", str(STALL_TIMEOUT_S))
    running = InProcessWorker(KeelSettings())
    app = running.start()
    try:
        yield running, app, f"http://127.0.0.1:{port}"
    finally:
        running.stop()


def _pause(consumer: Any, how: str) -> tuple[Any, Any]:
    """(pause, resume) of one partition, the two ways a partition stops moving."""
    if how == "not-handed-over":
        # Faust's pause: aiokafka still fetches the partition's next records, Faust never
        # hands them to the stream (faust#629 looks like this).
        return consumer.pause_partitions, consumer.resume_partitions
    # aiokafka's pause: the partition is not fetched at all, so the highwater aiokafka keeps
    # from its fetches goes stale (the watchdog has to ask the broker for the end offset).
    client = consumer._thread._ensure_consumer()

    def kafka_tps(tps: list[Any]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition) for tp in tps]

    if how == "not-fetched":
        return (
            (lambda tps: client.pause(*kafka_tps(tps))),
            (lambda tps: client.resume(*kafka_tps(tps))),
        )

    # Not fetched, and Faust's consumer thread answers no call (wedged): a watchdog that asked
    # through it would wait forever and report nothing; it asks the brokers itself.
    async def never_answers(*_tps: Any) -> Any:
        return await asyncio.get_running_loop().create_future()

    def pause(tps: list[Any]) -> None:
        client.pause(*kafka_tps(tps))
        consumer.highwaters = never_answers

    def resume(tps: list[Any]) -> None:
        del consumer.highwaters  # Faust's own again
        client.resume(*kafka_tps(tps))

    return pause, resume


@pytest.mark.parametrize("how", ["not-handed-over", "not-fetched", "consumer-thread-stuck"])
def test_a_partition_that_stops_moving_fails_healthz_until_it_moves_again(
    how: str,
    streams_env: StreamsEnv,
    worker: tuple[InProcessWorker, StreamsApp, str],
    admin: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running, app, url = worker
    caplog.set_level(logging.INFO, logger="keel.streams.app")

    def alive() -> None:
        if running.failed is not None:
            raise AssertionError(f"the worker failed: {running.failed!r}")

    def ready() -> bool:
        alive()
        return _get(url + "/readyz")[0] == 200

    wait_for(ready, 90, "the worker ready")
    consumer: Any = app.app.consumer
    source = streams_env.source

    def drained(count: int) -> Any:
        alive()
        return app.handled["source"] >= count

    # A healthy worker draining a backlog, then idle and caught up (its end offsets asked
    # for every tick), for several timeouts: never a stall.
    first = _events(users=40, per_user=50)
    streams_env.send(first)
    started = time.monotonic()
    while not drained(len(first)) or time.monotonic() - started < 3 * STALL_TIMEOUT_S:
        status, body = _get(url + "/healthz")
        assert (status, body) == (
            200,
            {"status": "ok", "checks": {"partitions": {"ok": True, "stalled": []}}},
        ), body
        time.sleep(0.2)  # the polling interval of a check that must hold throughout
    assert not [r for r in caplog.records if "stalled" in r.getMessage()]
    assert app.stalls == []

    # Stop fetching one partition that has been processed (its position is known) and send
    # more to every partition: the paused one has messages waiting and does not move.
    tp = next(t for t in consumer.assignment() if t.topic == source)
    pause, resume = _pause(consumer, how)
    running.call(pause, [tp])
    second = _events(users=40, per_user=5)
    streams_env.send(second)

    def unhealthy() -> Any:
        alive()
        status, body = _get(url + "/healthz")
        return body if status == 503 else None

    body = wait_for(unhealthy, 10 * STALL_TIMEOUT_S, "/healthz to report the stall")
    assert body["status"] == "unavailable"
    [stalled] = body["checks"]["partitions"]["stalled"]
    assert (stalled["topic"], stalled["partition"]) == (source, tp.partition)
    assert stalled["highwater"] > stalled["position"]
    assert stalled["stuck_s"] >= STALL_TIMEOUT_S
    assert _get(url + "/readyz")[0] == 200  # readiness is not the watchdog's business
    metrics = http_get(url + "/metrics")[1]
    assert "keel_streams_stalled_partitions 1.0" in metrics
    warnings = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"{source}[{tp.partition}]" in warnings[0].getMessage()

    # Only that partition stopped: the broker sees every other one of the source committed
    # to its end, and the paused one behind.
    def lags() -> dict[int, int]:
        found = group_lag(admin, app.settings.streams_app_id).partitions
        return {p.partition: p.lag for p in found if p.topic == source}

    def others_done() -> Any:
        alive()
        now = lags()
        others = [lag for partition, lag in now.items() if partition != tp.partition]
        return len(now) == 4 and not any(others) and now[tp.partition] > 0

    wait_for(others_done, 30, f"every partition but {tp.partition} processed")

    # Moving again clears it all.
    running.call(resume, [tp])
    wait_for(lambda: drained(len(first) + len(second)), 30, "the paused partition drained")
    wait_for(lambda: not any(lags().values()), 30, "every partition committed to its end")

    def healthy() -> Any:
        alive()
        return _get(url + "/healthz") == (
            200,
            {"status": "ok", "checks": {"partitions": {"ok": True, "stalled": []}}},
        )

    wait_for(healthy, 10 * STALL_TIMEOUT_S, "/healthz healthy again")
    assert "keel_streams_stalled_partitions 0.0" in http_get(url + "/metrics")[1]
    # one warning for the one stall, however many ticks it lasted
    assert len([r for r in caplog.records if "stalled:" in r.getMessage()]) == 1
