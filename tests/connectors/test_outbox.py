"""The transactional outbox source against a real PostgreSQL and a real Kafka: what a
service commits reaches Kafka as a Keel Avro event with its event_id, what it rolls back
never does, invalid rows are marked and skipped, replicas share the queue, a crash between
the acks and the commit re-sends with the same event_ids, and a broker outage marks nothing.

Each test owns its table (KEEL_OUTBOX_TABLE) and its topic (KEEL_INGEST_TOPIC_PREFIX)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from keel.connectors.outbox import (
    BatchResult,
    OutboxRelay,
    OutboxTable,
    OutboxUnavailable,
    connect,
    create_outbox,
    outbox_status,
    purge_published,
)
from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.local.ports import free_port
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel
from tests.producers.conftest import read_topic

ROOT = Path(__file__).resolve().parents[2]


def page_view(user: str = "u-1", **over: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": user,
        "url": "https://shop.example/p/1",
        "path": "/p/1",
        **over,
    }


class Outbox:
    """One test's outbox: its settings, table and topic, and helpers to write and read."""

    def __init__(self, settings: KeelSettings, dsn: str, bootstrap: str, registry: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.registry = registry
        self.table = OutboxTable.of(settings.outbox_table)
        self.topic = settings.ingest_topic_prefix + "events"

    def env(self, **extra: str) -> dict[str, str]:
        """KEEL_* for a subprocess (the relay or the console script) on this test's outbox."""
        return {
            **os.environ,
            "KEEL_BOOTSTRAP_SERVERS": self.bootstrap,
            "KEEL_SCHEMA_REGISTRY_URL": self.registry,
            "KEEL_OUTBOX_DSN": self.dsn,
            "KEEL_OUTBOX_TABLE": self.settings.outbox_table,
            "KEEL_INGEST_TOPIC_PREFIX": self.settings.ingest_topic_prefix,
            "KEEL_HOME": str(self.settings.home),
            **extra,
        }

    def insert(self, *events: Any, rollback: bool = False) -> list[int]:
        """Insert events in one transaction of a service's own connection; return row ids."""
        ids = []
        with psycopg.connect(self.dsn) as conn:
            for event in events:
                row = conn.execute(
                    sql.SQL("INSERT INTO {} (event) VALUES (%s) RETURNING id").format(
                        self.table.ident()
                    ),
                    (Jsonb(event),),
                ).fetchone()
                assert row is not None
                ids.append(row[0])
            if rollback:
                conn.rollback()
        return ids

    def rows(self) -> dict[int, dict[str, Any]]:
        with (
            psycopg.connect(self.dsn) as conn,
            conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
        ):
            cur.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(self.table.ident()))
            return {row["id"]: row for row in cur.fetchall()}

    def status(self) -> Any:
        with connect(self.dsn) as conn:
            return outbox_status(conn, self.table)

    def read(self, **kwargs: Any) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:
        return read_topic(self.bootstrap, self.registry, self.topic, **kwargs)

    def relay(self, **kwargs: Any) -> OutboxRelay:
        return OutboxRelay(self.settings, **kwargs)


@pytest.fixture
def outbox(
    kafka_bootstrap: str, schema_registry: str, postgres_dsn: str, admin: Any, tmp_path: Path
) -> Iterator[Outbox]:
    suffix = uuid.uuid4().hex[:10]
    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=schema_registry,
        outbox_dsn=postgres_dsn,  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
        outbox_table=f"outbox_{suffix}",
        ingest_topic_prefix=f"test-outbox-{suffix}-",
        # Long enough that anything quicker in the tests came from NOTIFY, not from polling.
        outbox_poll_interval_s=120.0,
        outbox_delivery_timeout_s=15.0,
        outbox_batch_size=50,
        home=tmp_path / "home",
    )
    box = Outbox(settings, postgres_dsn, kafka_bootstrap, schema_registry)
    ensure_topics(admin, [TopicSpec(box.topic, 3)])
    wait_for_topics(admin, [box.topic])
    with connect(postgres_dsn) as conn:
        create_outbox(conn, box.table)
    yield box
    delete_topics(admin, [box.topic])
    with connect(postgres_dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(box.table.ident()))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(box.table.ident("_notify")))


class Running:
    """`relay.run()` in a thread, stopped (and closed) on exit."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=relay.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> OutboxRelay:
        self.thread.start()
        return self.relay

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the relay did not stop"
        self.relay.close()


def test_committed_row_reaches_kafka_with_its_event_id_keyed_by_user(outbox: Outbox) -> None:
    with Running(outbox.relay()):
        first = page_view("u-1")
        [first_id] = outbox.insert(first)
        wait_for(lambda: outbox.rows()[first_id]["published_at"], what="first row published")
        # The relay now listens; with a 120 s poll interval, only NOTIFY explains a quick send.
        started = time.monotonic()
        second = {k: v for k, v in page_view("u-2").items() if k != "event_id"}
        [second_id] = outbox.insert(second)
        wait_for(lambda: outbox.rows()[second_id]["published_at"], timeout=20, what="NOTIFY")
        assert time.monotonic() - started < 20

    rows = outbox.rows()
    assigned = rows[second_id]["event"]["event_id"]  # persisted on the row by the relay
    assert str(uuid.UUID(assigned)) == assigned
    records = outbox.read(expect=2)
    by_id = {str(value["event_id"]): (key, value) for _p, _o, key, value in records}
    assert set(by_id) == {first["event_id"], assigned}
    key, value = by_id[first["event_id"]]
    assert key == b"u-1" and value["type"] == "page.viewed" and value["source"] == "outbox"
    assert value["path"] == "/p/1"
    assert by_id[assigned][0] == b"u-2"
    assert all(r["error"] is None for r in rows.values())
    assert outbox.status().pending == 0


def test_rolled_back_insert_never_appears(outbox: Outbox) -> None:
    rolled_back = page_view("u-1")
    committed = page_view("u-1")
    outbox.insert(rolled_back, rollback=True)
    outbox.insert(committed)
    relay = outbox.relay()
    try:
        assert relay.drain() == 1
    finally:
        relay.close()
    records = outbox.read(idle=1.0)
    assert [str(v["event_id"]) for *_, v in records] == [committed["event_id"]]
    assert [r["event"]["event_id"] for r in outbox.rows().values()] == [committed["event_id"]]


def test_invalid_rows_get_the_error_and_do_not_block_later_rows(outbox: Outbox) -> None:
    no_user = page_view()
    del no_user["user_id"]
    events = [
        no_user,
        page_view("u-1"),
        page_view("u-1", type="nope.nope"),
        ["not", "an", "object"],
        page_view("u-2", url=42),
        page_view("u-3"),
    ]
    ids = outbox.insert(*events)
    relay = OutboxRelay(outbox.settings.model_copy(update={"outbox_batch_size": 2}))
    try:
        assert relay.drain() == 2
        assert relay.drain() == 0  # a rejected row is never retried
    finally:
        relay.close()
    rows = outbox.rows()
    errors = {i: rows[i]["error"] for i in ids}
    assert errors[ids[0]] == "invalid event: user_id: required"
    assert errors[ids[2]] == "invalid event: type: unknown event type 'nope.nope'"
    assert errors[ids[3]] == "invalid event: an event must be a JSON object"
    assert errors[ids[4]] is not None and errors[ids[4]].startswith("invalid event: url:")
    for good in (ids[1], ids[5]):
        assert errors[good] is None and rows[good]["published_at"] is not None
    for bad in (ids[0], ids[2], ids[3], ids[4]):
        assert rows[bad]["published_at"] is None
    records = outbox.read(idle=1.0)
    assert sorted(str(v["event_id"]) for *_, v in records) == sorted(
        [events[1]["event_id"], events[5]["event_id"]]  # type: ignore[call-overload]
    )
    status = outbox.status()
    assert (status.pending, status.rejected) == (0, 4)


def test_event_kafka_refuses_for_good_is_rejected_not_retried(outbox: Outbox) -> None:
    big = page_view("u-1", path="/" + "x" * 2_000_000)  # past the producer's message.max.bytes
    ok = page_view("u-1")
    ids = outbox.insert(big, ok)
    relay = outbox.relay()
    try:
        assert relay.drain() == 1
    finally:
        relay.close()
    rows = outbox.rows()
    assert rows[ids[0]]["published_at"] is None
    assert rows[ids[0]]["error"].startswith("not accepted by Kafka: ")
    assert rows[ids[1]]["published_at"] is not None
    assert [str(v["event_id"]) for *_, v in outbox.read(idle=1.0)] == [ok["event_id"]]


def test_replicas_claim_disjoint_batches(outbox: Outbox) -> None:
    ids = outbox.insert(*[page_view(f"u-{i}") for i in range(8)])
    settings = outbox.settings.model_copy(update={"outbox_batch_size": 4})
    holding, release = threading.Event(), threading.Event()
    claimed: dict[str, BatchResult] = {}

    def hold(result: BatchResult) -> None:  # relay A keeps its batch locked until released
        holding.set()
        assert release.wait(30)

    relay_a = OutboxRelay(settings, before_commit=hold)
    relay_b = OutboxRelay(settings)
    thread = threading.Thread(target=lambda: claimed.setdefault("a", relay_a.publish_batch()))
    thread.start()
    try:
        assert holding.wait(30)
        claimed["b"] = relay_b.publish_batch()  # does not wait for A's locks: skips them
    finally:
        release.set()
        thread.join(30)
        relay_a.close()
        relay_b.close()
    assert set(claimed["a"].published) == set(ids[:4])  # A took the oldest rows
    assert set(claimed["b"].published) == set(ids[4:])
    assert outbox.status().pending == 0
    assert len(outbox.read(expect=8)) == 8


def test_two_relays_at_once_publish_every_row_exactly_once(outbox: Outbox) -> None:
    settings = outbox.settings.model_copy(update={"outbox_batch_size": 20})
    events = [page_view(f"u-{i % 7}") for i in range(300)]
    relays = [OutboxRelay(settings), OutboxRelay(settings)]
    with Running(relays[0]), Running(relays[1]):
        for start in range(0, 300, 30):  # ten service transactions while both relays run
            outbox.insert(*events[start : start + 30])
        wait_for(lambda: outbox.status().pending == 0, timeout=60, what="all rows published")
    assert relays[0].published_total + relays[1].published_total == 300
    records = outbox.read(expect=300, timeout=60)
    got = Counter(str(v["event_id"]) for *_, v in records)
    assert len(records) == 300 and set(got) == {e["event_id"] for e in events}
    assert max(got.values()) == 1
    assert len(outbox.read(idle=1.0)) == 300  # nothing more arrived after the 300


def test_relay_killed_between_acks_and_commit_resends_same_event_ids(outbox: Outbox) -> None:
    with_ids = [page_view("u-1"), page_view("u-2")]
    without_ids = [
        {k: v for k, v in page_view(f"u-{i}").items() if k != "event_id"} for i in (3, 4)
    ]
    ids = outbox.insert(*with_ids, *without_ids)

    crashed = subprocess.run(
        [sys.executable, "-m", "tests.connectors.outbox_crash_relay"],
        env=outbox.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    sent = {int(k): v for k, v in json.loads(crashed.stdout.splitlines()[0]).items()}
    assert set(sent) == set(ids)  # every row was acknowledged before the kill

    rows = outbox.rows()
    assert all(r["published_at"] is None and r["error"] is None for r in rows.values())
    on_rows = {i: rows[i]["event"]["event_id"] for i in ids}
    assert on_rows == sent  # the ids given to id-less rows were committed before producing
    assert on_rows[ids[0]] == with_ids[0]["event_id"]
    assert sorted(str(v["event_id"]) for *_, v in outbox.read(expect=4)) == sorted(sent.values())

    relay = outbox.relay()
    try:
        # PostgreSQL releases the dead relay's locks once it sees the connection gone.
        wait_for(lambda: relay.drain() >= 0 and outbox.status().pending == 0, what="re-send")
    finally:
        relay.close()
    records = outbox.read(expect=8)
    got = Counter(str(v["event_id"]) for *_, v in records)
    assert got == Counter({event_id: 2 for event_id in sent.values()})  # at least once, same ids
    assert all(r["published_at"] is not None for r in outbox.rows().values())


def test_retention_zero_deletes_rows_once_acked_and_keeps_rejected_ones(outbox: Outbox) -> None:
    good = [page_view(f"u-{i}") for i in range(5)]
    ids = outbox.insert(*good[:2], {"type": "page.viewed"}, *good[2:])
    settings = outbox.settings.model_copy(
        update={"outbox_retention_h": 0.0, "outbox_batch_size": 2}
    )
    seen: list[tuple[int, int]] = []

    def still_there(result: BatchResult) -> None:  # after the acks, before the commit
        seen.append((len(result.published), len(set(result.published) & set(outbox.rows()))))

    relay = OutboxRelay(settings, before_commit=still_there)
    try:
        assert relay.drain() == 5
    finally:
        relay.close()
    # Each batch's rows were still there for other sessions until its commit deleted them.
    assert seen == [(2, 2), (1, 1), (2, 2)]
    rows = outbox.rows()
    assert list(rows) == [ids[2]] and rows[ids[2]]["error"].startswith("invalid event: ")
    assert outbox.status().pending == 0
    assert {str(v["event_id"]) for *_, v in outbox.read(expect=5)} == {e["event_id"] for e in good}


def test_only_the_publishing_transaction_skips_the_wal_flush_wait(outbox: Outbox) -> None:
    # The second row has no event_id: a transaction before the publishing one gives it one.
    outbox.insert(page_view("u-1"), {k: v for k, v in page_view("u-2").items() if k != "event_id"})
    seen: list[str] = []
    relay = outbox.relay()

    def setting(result: BatchResult) -> None:  # inside the publishing transaction
        row = relay.connection().execute("SHOW synchronous_commit").fetchone()
        seen.append(row[0] if row else "")

    relay.before_commit = setting
    try:
        assert relay.drain() == 2
        row = relay.connection().execute("SHOW synchronous_commit").fetchone()
    finally:
        relay.close()
    assert seen == ["off"]  # SET LOCAL: the transaction's own, gone at its commit
    assert row is not None and row[0] == "on"
    assert all(r["published_at"] is not None for r in outbox.rows().values())


def test_broker_unreachable_leaves_rows_unpublished_and_marks_nothing(
    outbox: Outbox, caplog: pytest.LogCaptureFixture, refused_port: int
) -> None:
    ids = outbox.insert(page_view("u-1"), page_view("u-2"), {"type": "page.viewed"})
    down = outbox.settings.model_copy(
        update={
            "bootstrap_servers": f"127.0.0.1:{refused_port}",  # nothing listens there
            "outbox_delivery_timeout_s": 1.5,
            "outbox_backoff_max_s": 0.5,
        }
    )
    relay = OutboxRelay(down)
    try:
        with pytest.raises(OutboxUnavailable):
            relay.publish_batch()
        caplog.set_level(logging.WARNING, logger="keel.connectors.outbox")
        with Running(relay):  # backs off and retries, marking nothing
            wait_for(
                lambda: sum("retrying in" in r.getMessage() for r in caplog.records) >= 2,
                what="two retries",
            )
    finally:
        relay.close()
    rows = outbox.rows()
    assert all(r["published_at"] is None and r["error"] is None for r in rows.values())
    assert outbox.status().pending == 3

    back = outbox.relay()  # the broker is back: everything goes, the bad row is rejected
    try:
        assert back.drain() == 2
    finally:
        back.close()
    rows = outbox.rows()
    assert rows[ids[2]]["error"] == (
        "invalid event: user_id: required; url: required; path: required"
    )
    assert len(outbox.read(expect=2)) == 2


def test_purge_deletes_only_old_published_rows(outbox: Outbox) -> None:
    ids = outbox.insert(*[page_view() for _ in range(5)], {"type": "nope"})
    relay = outbox.relay()
    try:
        relay.drain()
    finally:
        relay.close()
    [pending_id] = outbox.insert(page_view())
    with connect(outbox.dsn) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET published_at = now() - interval '2 days' WHERE id = ANY(%s)")
            .format(outbox.table.ident()),
            (ids[:3],),
        )  # fmt: skip
        assert purge_published(conn, outbox.table, retention_s=86400, batch=2) == 3
        assert purge_published(conn, outbox.table, retention_s=86400) == 0
    assert sorted(outbox.rows()) == [ids[3], ids[4], ids[5], pending_id]


def test_init_is_idempotent_and_the_trigger_notifies_at_commit(outbox: Outbox) -> None:
    # The longest names the setting allows: the channel must still fit pg_notify's 63 bytes.
    long = uuid.uuid4().hex + "_" * 7 + "x" * 8
    table = OutboxTable.of(f"s{long}.t{long}")
    assert len(table.qualified) == 97 and len(table.channel) == 63
    with connect(outbox.dsn) as conn, connect(outbox.dsn) as listener:
        try:
            create_outbox(conn, table)
            create_outbox(conn, table)
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(table.channel)))
            insert = sql.SQL("INSERT INTO {} (event) VALUES (%s)").format(table.ident())
            with conn.transaction():
                conn.execute(insert, (Jsonb(page_view()),))
                conn.execute(insert, (Jsonb(page_view()),))
                assert list(listener.notifies(timeout=0.5)) == []  # not before the commit
            got = list(listener.notifies(timeout=10, stop_after=1))
            assert [n.channel for n in got] == [table.channel]
            assert list(listener.notifies(timeout=0.5)) == []  # one wake-up per transaction
            assert outbox_status(conn, table).pending == 2
        finally:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(table.schema or "")
                )
            )


# --- the console script ------------------------------------------------------------------


def test_cli_init_status_and_run(outbox: Outbox, tmp_path: Path) -> None:
    env = outbox.env(KEEL_OUTBOX_TABLE=f"outbox_cli_{uuid.uuid4().hex[:8]}")
    table = OutboxTable.of(env["KEEL_OUTBOX_TABLE"])
    box = Outbox(
        outbox.settings.model_copy(update={"outbox_table": table.qualified}),
        outbox.dsn,
        outbox.bootstrap,
        outbox.registry,
    )
    try:
        missing = run_keel("outbox", "status", env=env)
        assert missing.returncode == 1
        assert "does not exist: run `keel outbox init` first" in missing.stderr
        for _ in range(2):
            init = run_keel("outbox", "init", env=env)
            assert init.returncode == 0, init.stderr
            assert f"outbox table {table.qualified} ready" in init.stdout
        event = page_view("u-9")
        box.insert(event, {"type": "page.viewed"})
        status = run_keel("outbox", "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        figures = json.loads(status.stdout)
        assert figures["pending"] == 2 and figures["rejected"] == 0
        assert figures["oldest_pending_age_s"] >= 0

        port = free_port()
        relay = KeelProcess.start(
            [KEEL, "outbox", "run"],
            {**env, "KEEL_OUTBOX_PROGRESS_INTERVAL_S": "0.5", "KEEL_OUTBOX_HTTP_PORT": str(port)},
            tmp_path / "relay.log",  # its JSON log: `run` prints nothing else
            port=port,
            name="keel outbox run",
        )
        try:
            wait_for(lambda: box.status().pending == 0, what="keel outbox run publishes")
            assert wait_for(relay.ready, what="/readyz")
            assert relay.get("/healthz")[0] == 200
            metrics = wait_for(
                lambda: (m := relay.get("/metrics")[1]) and "keel_outbox_pending 0.0" in m and m,
                what="the pending gauge at 0",
            )
            assert "keel_outbox_published_total 1.0" in metrics
            assert "keel_outbox_rejected_total 1.0" in metrics
        finally:
            code = relay.stop()  # SIGTERM; SIGKILL (and a failure below) after 30 s
        assert code == 0, relay.tail()
        lines = [json.loads(line) for line in relay.log.read_text().splitlines() if line.strip()]
        progress = [e for e in lines if e["msg"].startswith("outbox progress")]
        assert sum(e["published"] for e in progress) == 1
        assert sum(e["rejected"] for e in progress) == 1
        assert progress[-1]["pending"] == 0
        records = outbox.read(expect=1)
        assert [str(v["event_id"]) for *_, v in records] == [event["event_id"]]

        text = run_keel("outbox", "status", env=env)
        assert "pending:  0" in text.stdout and "rejected: 1" in text.stdout
    finally:
        with connect(outbox.dsn) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.ident()))
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(table.ident("_notify")))


@pytest.mark.parametrize("command", ["init", "status", "run", "purge"])
def test_cli_unreachable_database_is_one_line_and_exit_1(outbox: Outbox, command: str) -> None:
    closed = f"postgresql://keel:keel@127.0.0.1:{free_port()}/keel"
    result = run_keel("outbox", command, env=outbox.env(KEEL_OUTBOX_DSN=closed))
    assert result.returncode == 1
    assert result.stderr.startswith("keel: error: cannot connect to PostgreSQL at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_malformed_dsn_names_the_setting(outbox: Outbox) -> None:
    result = run_keel("outbox", "status", env=outbox.env(KEEL_OUTBOX_DSN="not a dsn"))
    assert result.returncode == 1
    assert result.stderr.startswith("keel: error: KEEL_OUTBOX_DSN: ")
