"""The webhook sink against the real broker and registry: `keel webhooks run` processes
reading Keel Avro events published with the producer SDK, and a real aiohttp receiver on a
free port that scripts its answers and records every request."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from keel.connectors.webhooks import H_ATTEMPTS, H_EVENT_ID, H_SUBSCRIBER, verify
from keel.deadletters import (
    H_ERROR,
    H_ORIG_OFFSET,
    H_ORIG_PARTITION,
    H_ORIG_TOPIC,
    H_REASON,
    DeadLetter,
    read,
)
from keel.kafka import TopicSpec, ensure_topics, make_consumer, wait_for_topics
from keel.local.ports import free_port
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel

SECRETS = {"all": "whsec_all_0123456789abcdef", "users": "whsec_users_0123456789abcdef"}


# -- the receiver -------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """An aiohttp server on its own thread. `script[path]` lists answers to give, in order
    ((status, headers)); once used up, every request gets 200."""

    port: int = field(default_factory=free_port)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)  # paths whose answers wait until released
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        while request.path in self.hold:
            await asyncio.sleep(0.02)
        with self._lock:
            self.requests.append(
                Received(request.path, dict(request.headers), body, time.monotonic())
            )
            answers = self.script.get(request.path)
            status, headers = answers.pop(0) if answers else (200, {})
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()

        def main() -> None:
            assert self._loop is not None
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10), "receiver did not start"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


# -- the deployment -----------------------------------------------------------------------


@dataclass
class HooksEnv:
    env: dict[str, str]
    prefix: str
    source: str
    group: str
    dlq_prefix: str
    registry: str
    tmp: Path
    receiver: Receiver
    sinks: list[KeelProcess] = field(default_factory=list)

    def subscriptions(self, subs: Sequence[Mapping[str, Any]]) -> Path:
        path = self.tmp / f"hooks-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"subscriptions": list(subs)}))
        return path

    def start(self, subs: Path, **extra_env: str) -> KeelProcess:
        port = free_port()
        sink = KeelProcess.start(
            [KEEL, "webhooks", "run", "--subscriptions", str(subs)],
            {**self.env, "KEEL_WEBHOOKS_HTTP_PORT": str(port), **extra_env},
            self.tmp / f"sink-{len(self.sinks)}.log",
            port=port,
            name="the sink",
        )
        self.sinks.append(sink)
        # Ready: joined its group (partitions assigned), its dead-letter topics created.
        wait_for(sink.ready, 60, "the sink ready")
        return sink

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        from keel.producers.sdk import KeelProducer

        with KeelProducer(source="test", registry_url=self.registry, topic_prefix=self.prefix) as p:
            for event in events:
                p.send(event)
            results = p.flush(30)
        failed = [r for r in results if not r.ok]
        assert not failed, failed[:3]

    def dead_letters(self, name: str) -> list[DeadLetter]:
        return read(KeelSettings(bootstrap_servers=self.env["KEEL_BOOTSTRAP_SERVERS"]), name)

    def committed(self, partitions: int) -> int:
        """Sum of the group's committed offsets on the source topic."""
        consumer = make_consumer(self.group)
        try:
            tps = [TopicPartition(self.source, p) for p in range(partitions)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        finally:
            consumer.close()


def sub(name: str, url: str, events: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "events": events, "secret": SECRETS[name], **extra}


def page(user: str, n: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": user,
        "occurred_at": f"2026-11-28T10:00:{n % 60:02d}Z",
        "url": f"https://shop.example/p/{n}",
        "path": f"/p/{n}",
    }


def signup(user: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "user.signed_up",
        "user_id": user,
        "occurred_at": "2026-11-28T09:00:00Z",
        "email": f"{user}@example.com",
    }


@pytest.fixture
def hooks(
    kafka_bootstrap: str, schema_registry: str, admin: AdminClient, tmp_path: Path
) -> Iterator[HooksEnv]:
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    source = f"{prefix}events"  # where the SDK writes with this topic prefix
    ensure_topics(admin, [TopicSpec(source, 3)])
    wait_for_topics(admin, [source])
    receiver = Receiver()
    receiver.start()
    group = f"test-webhooks-{uuid.uuid4().hex[:10]}"
    dlq_prefix = f"{prefix}hooks-dlq."
    env = {
        **os.environ,
        "KEEL_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": schema_registry,
        "KEEL_WEBHOOKS_TOPICS": source,
        "KEEL_WEBHOOKS_GROUP": group,
        "KEEL_WEBHOOKS_DLQ_PREFIX": dlq_prefix,
        "KEEL_WEBHOOKS_BACKOFF_INITIAL_S": "0.05",
        "KEEL_WEBHOOKS_BACKOFF_MAX_S": "0.3",
        "KEEL_WEBHOOKS_TIMEOUT_S": "5",
        "KEEL_WEBHOOKS_COMMIT_INTERVAL_MS": "200",
        "KEEL_WEBHOOKS_SESSION_TIMEOUT_MS": "6000",  # a killed sink's partitions move soon
        "KEEL_WEBHOOKS_PROGRESS_INTERVAL_S": "2",
        "KEEL_LOG_LEVEL": "INFO",
    }
    hooks = HooksEnv(env, prefix, source, group, dlq_prefix, schema_registry, tmp_path, receiver)
    yield hooks
    for sink in hooks.sinks:
        sink.stop_and_show()
    receiver.stop()
    topics = [source, *(f"{dlq_prefix}{n}" for n in SECRETS)]
    admin.delete_topics(topics, request_timeout=30)


def test_events_reach_each_subscriber_signed_and_in_order_per_key(hooks: HooksEnv) -> None:
    subs = hooks.subscriptions(
        [
            sub("all", hooks.receiver.url("/all")),
            sub("users", hooks.receiver.url("/users"), ["user.*"]),
        ]
    )
    sink = hooks.start(subs)
    users = [f"u{i}" for i in range(6)]
    events = [signup(u) for u in users] + [page(users[n % 6], n) for n in range(60)]
    hooks.send(events)

    sent_ids = [e["event_id"] for e in events]
    wait_for(
        lambda: {r.event["event_id"] for r in hooks.receiver.at("/all")} >= set(sent_ids),
        60,
        "every event at /all",
    )
    wait_for(lambda: len(hooks.receiver.at("/users")) >= 6, 30, "the sign-ups at /users")

    for path, name in (("/all", "all"), ("/users", "users")):
        for r in hooks.receiver.at(path):
            event = r.event
            assert verify(SECRETS[name], r.body, r.headers["Keel-Signature"]) > 0
            assert r.headers["Keel-Event-Id"] == event["event_id"]
            assert r.headers["Keel-Event-Type"] == event["type"]
            assert r.headers["Content-Type"] == "application/json"
            uuid.UUID(r.headers["Keel-Delivery-Id"])
    # The other subscriber's secret does not verify: each subscriber has its own.
    first = hooks.receiver.at("/all")[0]
    with pytest.raises(Exception, match="no v1 signature matches"):
        verify(SECRETS["users"], first.body, first.headers["Keel-Signature"])
    # Only what they asked for: /users saw the sign-ups and nothing else.
    assert {r.event["type"] for r in hooks.receiver.at("/users")} == {"user.signed_up"}
    assert {r.event["event_id"] for r in hooks.receiver.at("/users")} == set(sent_ids[:6])
    # One user's events arrive in the order they were published (same key, same partition).
    order: dict[str, list[str]] = {}
    for r in hooks.receiver.at("/all"):
        seen = order.setdefault(r.event["user_id"], [])
        if r.event["event_id"] not in seen:
            seen.append(r.event["event_id"])
    for user in users:
        assert order[user] == [e["event_id"] for e in events if e["user_id"] == user], user
    # The body is the event as JSON values: uuid as text, time as integer microseconds.
    signed_up = next(r.event for r in hooks.receiver.at("/users"))
    assert signed_up["email"].endswith("@example.com")
    assert isinstance(signed_up["occurred_at"], int)
    # Everything was finished, so the group commits to the end of the topic.
    wait_for(lambda: hooks.committed(3) == len(events), 30, "offsets committed to the end")
    # The metrics count what was delivered.
    assert 'keel_webhooks_delivered_total{subscriber="users"} 6.0' in sink.text("/metrics")


def test_503_twice_then_200_delivers_after_retries_and_429_waits_its_retry_after(
    hooks: HooksEnv,
) -> None:
    hooks.receiver.script["/all"] = [(503, {}), (503, {})]
    hooks.receiver.script["/users"] = [(429, {"Retry-After": "1"})]
    hooks.start(
        hooks.subscriptions(
            [sub("all", hooks.receiver.url("/all")), sub("users", hooks.receiver.url("/users"))]
        )
    )
    event = signup("retry-user")
    hooks.send([event])

    tries = wait_for(lambda: (r := hooks.receiver.at("/all")) and len(r) >= 3 and r, 30, "3 tries")
    assert [r.headers["Keel-Attempt"] for r in tries] == ["1", "2", "3"]
    assert {r.headers["Keel-Event-Id"] for r in tries} == {event["event_id"]}
    assert len({r.headers["Keel-Delivery-Id"] for r in tries}) == 1  # one delivery, 3 attempts
    assert all(verify(SECRETS["all"], r.body, r.headers["Keel-Signature"]) for r in tries)
    waited = wait_for(lambda: (r := hooks.receiver.at("/users")) and len(r) >= 2 and r, 30, "429")
    assert waited[1].at - waited[0].at >= 0.95  # Retry-After: 1 was honoured
    wait_for(lambda: hooks.committed(3) == 1, 30, "the offset committed")
    assert len(hooks.receiver.at("/all")) == 3  # exactly once more after the retries, no more
    assert hooks.dead_letters(f"{hooks.dlq_prefix}all") == []


def test_a_400_goes_straight_to_the_dead_letter_topic_and_keel_dlq_reads_it(
    hooks: HooksEnv,
) -> None:
    hooks.receiver.script["/all"] = [(400, {})]
    hooks.start(
        hooks.subscriptions(
            [sub("all", hooks.receiver.url("/all")), sub("users", hooks.receiver.url("/users"))]
        )
    )
    event = signup("bad-user")
    hooks.send([event])
    dlq = f"{hooks.dlq_prefix}all"
    letters = wait_for(lambda: hooks.dead_letters(dlq), 30, "a dead letter")
    assert len(hooks.receiver.at("/all")) == 1  # never retried
    assert len(letters) == 1
    h = letters[0].headers
    assert h[H_REASON] == "permanent"
    assert h[H_ERROR] == "HTTP 400: answer 400"
    assert h["keel.error.class"] == "keel.connectors.webhooks.DeliveryRefused"
    assert h[H_ORIG_TOPIC] == hooks.source
    assert h[H_SUBSCRIBER] == "all" and h[H_ATTEMPTS] == "1" and h[H_EVENT_ID] == event["event_id"]
    delivered = hooks.receiver.at("/users")[0]  # the other subscriber got it all the same
    assert h[H_ORIG_OFFSET] == "0"
    assert int(h[H_ORIG_PARTITION]) in range(3)
    assert letters[0].key == b"bad-user"
    assert delivered.event["event_id"] == event["event_id"]
    wait_for(lambda: hooks.committed(3) == 1, 30, "the offset committed past the dead letter")
    # `keel dlq list` reads it like any other Keel dead letter.
    out = run_keel("dlq", "list", dlq, env=hooks.env)
    assert out.returncode == 0, out.stderr
    assert "permanent" in out.stdout and "HTTP 400" in out.stdout
    # Once the receiver is fixed, a replay reaches the subscriber that missed it, only it.
    out = run_keel("dlq", "replay", dlq, env=hooks.env)
    assert out.returncode == 0, out.stderr
    again = wait_for(lambda: len(r := hooks.receiver.at("/all")) >= 2 and r, 30, "the replay")
    assert again[1].event["event_id"] == event["event_id"]
    assert verify(SECRETS["all"], again[1].body, again[1].headers["Keel-Signature"]) > 0
    wait_for(lambda: hooks.committed(3) == 2, 30, "the replayed event committed")
    assert len(hooks.receiver.at("/users")) == 1  # it had taken the event the first time
    assert len(hooks.receiver.at("/all")) == 2


def test_a_receiver_down_past_max_attempts_dead_letters_without_stalling_others(
    hooks: HooksEnv,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    hooks.start(
        hooks.subscriptions(
            [
                sub("users", down, max_attempts=3),
                sub("all", hooks.receiver.url("/all")),
            ]
        )
    )
    events = [signup("down-user"), page("down-user", 1), page("down-user", 2)]
    hooks.send(events)
    ids = [e["event_id"] for e in events]
    wait_for(lambda: [r.event["event_id"] for r in hooks.receiver.at("/all")] == ids, 30, "/all")
    dlq = f"{hooks.dlq_prefix}users"
    letters = wait_for(lambda: len(x := hooks.dead_letters(dlq)) >= 3 and x, 60, "3 letters")
    assert [x.headers[H_EVENT_ID] for x in letters] == ids  # in order, one partition
    for letter in letters:
        assert letter.headers[H_REASON] == "exhausted"
        assert letter.headers[H_ATTEMPTS] == "3"
        assert "ClientConnectorError" in letter.headers[H_ERROR]
    wait_for(lambda: hooks.committed(3) == 3, 30, "offsets committed past the letters")


def test_an_undecodable_record_is_dead_lettered_to_every_subscriber(hooks: HooksEnv) -> None:
    hooks.start(
        hooks.subscriptions(
            [
                sub("all", hooks.receiver.url("/all")),
                sub("users", hooks.receiver.url("/users"), ["user.*"]),
            ]
        )
    )
    from keel.kafka import make_producer

    raw = make_producer()
    raw.produce(hooks.source, key=b"poison", value=b"not keel avro", partition=0)
    assert raw.flush(30) == 0
    event = signup("after-poison")
    hooks.send([event])
    for name in ("all", "users"):
        letters = wait_for(lambda n=name: hooks.dead_letters(f"{hooks.dlq_prefix}{n}"), 30, name)
        assert [x.value for x in letters] == [b"not keel avro"]
        assert letters[0].headers[H_REASON] == "undecodable"
        assert letters[0].headers[H_ORIG_PARTITION] == "0"
    # The pipeline goes on: the next event is delivered and everything is committed.
    wait_for(lambda: len(hooks.receiver.at("/users")) == 1, 30, "the next event")
    assert hooks.receiver.at("/all")[0].event["event_id"] == event["event_id"]
    wait_for(lambda: hooks.committed(3) == 2, 30, "offsets committed past the poison")


def test_a_stuck_subscriber_holds_the_others_back_only_up_to_the_read_ahead(
    hooks: HooksEnv,
) -> None:
    hooks.receiver.hold.add("/users")  # answers nothing until released
    sink = hooks.start(
        hooks.subscriptions(
            [
                sub("users", hooks.receiver.url("/users"), timeout_s=120),
                sub("all", hooks.receiver.url("/all")),
            ]
        ),
        KEEL_WEBHOOKS_MAX_PENDING="20",
    )
    user = "one-partition-user"  # one key: every event on one partition, in order
    first = [signup(user), *(page(user, n) for n in range(59))]
    hooks.send(first)

    def consumed() -> int:
        for line in sink.text("/metrics").splitlines():
            if line.startswith('keel_consumer_consumed_total{component="webhooks"} '):
                return int(float(line.split()[1]))
        return 0

    # The read-ahead fills (the stuck subscriber holds the commit) and the partition waits;
    # the other subscriber still gets everything read so far.
    wait_for(lambda: "read-ahead full" in sink.tail(200), 30, "the partition paused")
    read = consumed()
    assert read >= 20
    wait_for(lambda: len(hooks.receiver.at("/all")) == read, 30, f"the {read} read at /all")
    assert len(hooks.receiver.at("/users")) == 0  # its first request is still unanswered
    later = [page(user, n) for n in range(60, 90)]
    hooks.send(later)
    deadline = time.monotonic() + 3  # a window to show nothing more is read while paused
    while time.monotonic() < deadline:
        assert consumed() == read and len(hooks.receiver.at("/all")) == read
        time.sleep(0.1)
    assert hooks.committed(3) == 0
    # Released, everything flows, in order, to both; nothing read before the pause is lost.
    hooks.receiver.hold.discard("/users")
    ids = [e["event_id"] for e in first + later]
    for path in ("/users", "/all"):
        got = wait_for(
            lambda p=path: (
                (r := [x.event["event_id"] for x in hooks.receiver.at(p)])
                and len(set(r)) == 90
                and r
            ),
            60,
            f"all 90 at {path}",
        )
        assert list(dict.fromkeys(got)) == ids, path
    wait_for(lambda: hooks.committed(3) == 90, 30, "all committed")


def test_two_sinks_share_the_partitions_and_one_takes_over_when_the_other_stops(
    hooks: HooksEnv,
) -> None:
    subs = hooks.subscriptions([sub("all", hooks.receiver.url("/all"))])
    users = [f"g{i}" for i in range(12)]
    sent: list[dict[str, Any]] = []

    def send_round(n: int) -> None:
        batch = [page(users[i % len(users)], n * 100 + i) for i in range(36)]
        sent.extend(batch)
        hooks.send(batch)

    def delivered() -> set[str]:
        return {r.event["event_id"] for r in hooks.receiver.at("/all")}

    first = hooks.start(subs)
    send_round(0)
    wait_for(lambda: delivered() >= {e["event_id"] for e in sent}, 60, "round 0")
    second = hooks.start(subs)  # joins the group: the partitions are split between them
    wait_for(lambda: "assigned" in second.tail(200) and "revoked" in first.tail(200), 60, "split")
    send_round(1)
    wait_for(lambda: delivered() >= {e["event_id"] for e in sent}, 60, "round 1")
    assert first.stop() == 0  # leaves the group: the second sink takes every partition
    send_round(2)
    wait_for(lambda: delivered() >= {e["event_id"] for e in sent}, 60, "round 2")
    wait_for(lambda: hooks.committed(3) == len(sent), 30, "everything committed")
    # Each user's events were first delivered in the order they were published.
    order: dict[str, list[str]] = {}
    for r in hooks.receiver.at("/all"):
        seen = order.setdefault(r.event["user_id"], [])
        if r.event["event_id"] not in seen:
            seen.append(r.event["event_id"])
    for user in users:
        assert order[user] == [e["event_id"] for e in sent if e["user_id"] == user], user


def test_a_killed_sink_resends_what_it_had_not_committed_and_loses_nothing(
    hooks: HooksEnv,
) -> None:
    subs = hooks.subscriptions([sub("all", hooks.receiver.url("/all"))])
    # First run: it never gets to commit (a commit interval of an hour), then SIGKILL.
    first = hooks.start(subs, KEEL_WEBHOOKS_COMMIT_INTERVAL_MS="3600000")
    batch1 = [page(f"k{n % 4}", n) for n in range(40)]
    hooks.send(batch1)
    ids1 = {e["event_id"] for e in batch1}

    def count(ids: set[str]) -> dict[str, int]:
        seen: dict[str, int] = {}
        for r in hooks.receiver.at("/all"):
            if r.event["event_id"] in ids:
                seen[r.event["event_id"]] = seen.get(r.event["event_id"], 0) + 1
        return seen

    wait_for(lambda: set(count(ids1)) == ids1, 60, "batch 1 delivered by the first sink")
    first.kill()
    assert hooks.committed(3) == 0

    # Second run: everything uncommitted is sent again; then a clean stop commits.
    second = hooks.start(subs)
    wait_for(lambda: all(n >= 2 for n in count(ids1).values()), 60, "batch 1 re-sent")
    wait_for(lambda: hooks.committed(3) == 40, 30, "batch 1 committed")
    assert second.stop() == 0
    resent = count(ids1)

    # Third run: only new events are sent; what was committed is not sent again.
    hooks.start(subs)
    batch2 = [page(f"k{n % 4}", n) for n in range(10)]
    hooks.send(batch2)
    ids2 = {e["event_id"] for e in batch2}
    wait_for(lambda: set(count(ids2)) == ids2, 60, "batch 2 delivered")
    wait_for(lambda: hooks.committed(3) == 50, 30, "batch 2 committed")
    assert count(ids1) == resent


def test_check_names_the_bad_subscription_and_field(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[subscriptions]]\nname = "all"\nurl = "http://127.0.0.1:9/in"\n'
        f'secret = "{SECRETS["all"]}"\n'
    )
    out = run_keel("webhooks", "check", str(good))
    assert out.returncode == 0 and f"{good}: OK" in out.stdout, out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([sub("all", "not a url"), sub("users", "http://x/", ["nope"])]))
    out = run_keel("webhooks", "check", str(bad))
    assert out.returncode == 1
    assert "subscription 'all' (#1) field 'url'" in out.stderr
    assert "subscription 'users' (#2) field 'events': 'nope' matches no event type" in out.stderr
    # `run` refuses the same file before touching Kafka.
    out = run_keel("webhooks", "run", "-s", str(bad))
    assert out.returncode == 1 and "field 'url'" in out.stderr


def test_sign_prints_the_header_a_receiver_verifies() -> None:
    out = run_keel("webhooks", "sign", "--secret", SECRETS["all"], '{"a":1}')
    assert out.returncode == 0, out.stderr
    name, _, value = out.stdout.strip().partition(": ")
    assert name == "Keel-Signature"
    assert verify(SECRETS["all"], b'{"a":1}', value) > 0
