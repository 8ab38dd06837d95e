"""keel.health: the one shape of /healthz and /readyz, served by the threaded server and by
aiohttp routes alike; keel.metrics: the keel_consumer_* names."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from keel.health import (
    Checks,
    HealthServer,
    answer,
    beating,
    check,
    loop_server,
    routes,
    serving,
)
from keel.metrics import ConsumerMetrics


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def test_all_checks_ok_is_200_and_any_failing_is_503_naming_it() -> None:
    assert answer({"a": check(True), "b": check(True, n=3)}) == (
        200,
        {"status": "ok", "checks": {"a": {"ok": True}, "b": {"ok": True, "n": 3}}},
    )
    status, body = answer({"a": check(True), "store": check(False, error="down")})
    assert status == 503
    assert body == {
        "status": "unavailable",
        "checks": {"a": {"ok": True}, "store": {"ok": False, "error": "down"}},
    }
    assert answer({})[0] == 503  # nothing checked is not a promise of health


def test_a_beat_older_than_the_limit_fails() -> None:
    assert beating(100.0, 5.0, now=104.0).as_dict() == {
        "ok": True,
        "last_beat_s": 4.0,
        "stale_after_s": 5.0,
    }
    assert not beating(100.0, 5.0, now=105.5).ok


def test_the_threaded_server_answers_the_shape_and_metrics() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics("demo", registry)
    metrics.consumed = 7
    ready = {"group": check(False, group="g")}
    beat = [time.monotonic()]
    server = loop_server(
        "demo",
        0,
        registry=registry,
        heartbeat=lambda: beat[0],
        stale_after=60,
        ready=lambda: ready,
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/healthz")
        assert status == 200 and body["status"] == "ok" and body["checks"]["loop"]["ok"]
        status, body = _get(base + "/readyz")
        assert status == 503 and body["status"] == "unavailable"
        assert body["checks"]["group"] == {"ok": False, "group": "g"}
        ready["group"] = check(True)
        assert _get(base + "/readyz")[0] == 200
        beat[0] -= 120  # the loop went silent
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/readyz")[0] == 503
        status, text = _get(base + "/metrics")
        assert 'keel_consumer_consumed_total{component="demo"} 7.0' in text
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_probe_that_raises_is_a_failed_check_not_a_500() -> None:
    def broken() -> Checks:
        raise RuntimeError("boom")

    server = HealthServer("x", 0, healthz=broken, readyz=broken, metrics=lambda: b"")
    server.start()
    try:
        status, body = _get(f"http://127.0.0.1:{server.port}/readyz")
        assert status == 503
        assert body["checks"]["probe"] == {"ok": False, "error": "RuntimeError: boom"}
    finally:
        server.stop()


def test_a_taken_port_is_one_error_naming_the_setting() -> None:
    class Refused(Exception):
        pass

    taken = HealthServer("x", 0, healthz=dict, readyz=dict, metrics=lambda: b"")
    try:
        make = lambda p: HealthServer("y", p, healthz=dict, readyz=dict, metrics=lambda: b"")  # noqa: E731
        try:
            with serving(make, taken.port, "KEEL_X_PORT", Refused):
                raise AssertionError("bound a taken port")
        except Refused as exc:
            assert str(exc).startswith(f"KEEL_X_PORT {taken.port}: ")
        with serving(make, 0, "KEEL_X_PORT", Refused) as none:
            assert none is None  # 0: no server
    finally:
        taken.server.server_close()


def test_the_aiohttp_routes_answer_the_same_shape() -> None:
    async def scenario() -> None:
        async def healthz(_app: web.Application) -> Checks:
            return {"http": check(True)}

        async def readyz(_app: web.Application) -> Checks:
            return {"broker": check(False, error="no")}

        async def metrics(_app: web.Application) -> bytes:
            return b"keel_x 1\n"

        app = web.Application()
        app.add_routes(routes(healthz=healthz, readyz=readyz, metrics=metrics))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        try:
            base = f"http://127.0.0.1:{port}"
            assert await loop.run_in_executor(None, _get, base + "/healthz") == (
                200,
                {"status": "ok", "checks": {"http": {"ok": True}}},
            )
            status, body = await loop.run_in_executor(None, _get, base + "/readyz")
            assert (status, body["status"]) == (503, "unavailable")
            assert (await loop.run_in_executor(None, _get, base + "/metrics"))[1] == "keel_x 1\n"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_consumer_metrics_are_keel_consumer_names_labelled_by_component() -> None:
    registry = CollectorRegistry()
    m = ConsumerMetrics("pgsink", registry)
    m.consumed, m.processed, m.in_flight, m.paused = 10, 8, 2, True
    m.skipped["duplicate"] += 1
    m.dead_lettered["undecodable"] += 1
    text = generate_latest(registry).decode()
    for line in (
        'keel_consumer_consumed_total{component="pgsink"} 10.0',
        'keel_consumer_processed_total{component="pgsink"} 8.0',
        'keel_consumer_skipped_total{component="pgsink",reason="duplicate"} 1.0',
        'keel_consumer_dead_lettered_total{component="pgsink",reason="undecodable"} 1.0',
        'keel_consumer_in_flight{component="pgsink"} 2.0',
        'keel_consumer_paused{component="pgsink"} 1.0',
    ):
        assert line in text, text
    names = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln[0] != "#"}
    assert all(n.startswith("keel_consumer_") for n in names), names
    assert m.counts()["consumed"] == 10 and m.counts()["dead_lettered"] == 1


def test_keel_status_reads_readiness_and_names_the_failing_checks() -> None:
    from keel.local.services import ProcessService, ServiceStatus
    from keel.settings import KeelSettings

    unready = {"status": "unavailable", "checks": {"loop": {"ok": True}, "sink": {"ok": False}}}
    st = ServiceStatus("pgsink", True, True, "x", url="http://h", readiness=unready)
    assert not st.ready and st.unready_checks() == ["sink"]
    assert ServiceStatus("redis", True, True, "x").ready  # no /readyz: healthy is enough
    assert not ServiceStatus("pgsink", True, False, "x", url="http://h").ready

    # A process serving keel.health answers its /readyz body, a 503 included.
    server = HealthServer(
        "x",
        0,
        healthz=lambda: {"loop": check(True)},
        readyz=lambda: {"group": check(False)},
        metrics=lambda: b"",
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        service = ProcessService("x", [], KeelSettings(), port=server.port, ops_url=url)
        assert service.health_url == url + "/healthz" and service.healthy()
        assert service.readiness()["checks"] == {"group": {"ok": False}}
    finally:
        server.stop()
