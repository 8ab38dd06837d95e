"""The PostgreSQL sink against a real Kafka, registry and PostgreSQL: events published with
the SDK become rows (columns and jsonb), a repeated event_id is one row, the type filter
keeps only wanted types, an undecodable record is dead-lettered and the partition goes on,
a sink stopped between the database commit and the offset commit re-writes nothing twice
and loses nothing, and a database outage commits no offsets and recovers.

Each test owns its topic, group, dead-letter topic and table."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr

from keel.connectors.pgsink import Batch, PgSink, Table, connect, create_table
from keel.deadletters import H_ORIG_OFFSET, H_ORIG_PARTITION, H_ORIG_TOPIC, H_REASON, read
from keel.kafka import (
    TopicSpec,
    delete_topics,
    ensure_topics,
    make_consumer,
    make_producer,
    wait_for_topics,
)
from keel.local.ports import free_port
from keel.producers.sdk import KeelProducer
from keel.settings import KeelSettings
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel

PARTITIONS = 3


def page(user: str, n: int = 0, **over: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page.viewed",
        "user_id": user,
        "occurred_at": f"2026-11-28T10:00:{n % 60:02d}Z",
        "url": f"https://shop.example/p/{n}",
        "path": f"/p/{n}",
        **over,
    }


def cart(user: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "cart.item_added",
        "user_id": user,
        "occurred_at": "2026-11-28T11:30:00.123456Z",
        "product_id": "sku-1",
        "quantity": 2,
        "unit_price": "19.99",
    }


class PgEnv:
    def __init__(self, settings: KeelSettings, dsn: str, registry: str, source: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.registry = registry
        self.source = source
        self.table = Table.of(settings.pgsink_table)
        self.prefix = source.removesuffix("events")

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        with KeelProducer(
            source="test",
            settings=self.settings,
            registry_url=self.registry,
            topic_prefix=self.prefix,
        ) as producer:
            for event in events:
                producer.send(event)
            results = producer.flush(30)
        failed = [r for r in results if not r.ok]
        assert not failed, failed[:3]

    def rows(self) -> list[dict[str, Any]]:
        with (
            psycopg.connect(self.dsn) as conn,
            conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
        ):
            cur.execute(sql.SQL('SELECT * FROM {} ORDER BY "offset"').format(self.table.ident()))
            return cur.fetchall()

    def count(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(self.table.ident())
            ).fetchone()
        return int(row[0]) if row else 0

    def committed(self) -> int:
        """Sum of the sink group's committed offsets on the source topic."""
        consumer = make_consumer(self.settings.pgsink_group, self.settings)
        try:
            tps = [TopicPartition(self.source, p) for p in range(PARTITIONS)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        finally:
            consumer.close()

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "KEEL_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "KEEL_SCHEMA_REGISTRY_URL": self.registry,
            "KEEL_PGSINK_DSN": self.dsn,
            "KEEL_PGSINK_TABLE": s.pgsink_table,
            "KEEL_PGSINK_TOPICS": s.pgsink_topics,
            "KEEL_PGSINK_GROUP": s.pgsink_group,
            "KEEL_PGSINK_DLQ_TOPIC": s.pgsink_dlq_topic,
            "KEEL_PGSINK_BATCH_MS": "100",
            **extra,
        }


class Running:
    """`sink.run()` in a thread; stopped and closed on exit; an exception it raised kept."""

    def __init__(self, sink: PgSink) -> None:
        self.sink = sink
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sink.run(self.stop)
        except BaseException as exc:  # kept for the test to look at
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        wait_for(lambda: self.sink.ready or self.error, 60, "the sink joined its group")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the sink did not stop"
        self.sink.close()


@pytest.fixture
def pg(
    kafka_bootstrap: str, schema_registry: str, postgres_dsn: str, admin: AdminClient
) -> Iterator[PgEnv]:
    suffix = uuid.uuid4().hex[:10]
    source = f"test-pgsink-{suffix}-events"
    settings = KeelSettings(
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=schema_registry,
        pgsink_dsn=postgres_dsn,  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
        pgsink_table=f"events_{suffix}",
        pgsink_topics=source,
        pgsink_group=f"test-pgsink-{suffix}",
        pgsink_dlq_topic=f"test-pgsink-{suffix}-dlq",
        pgsink_batch_size=50,
        pgsink_batch_ms=100,
        pgsink_backoff_max_s=0.5,
        pgsink_session_timeout_ms=6000,
        pgsink_progress_interval_s=1.0,
    )
    ensure_topics(admin, [TopicSpec(source, PARTITIONS), TopicSpec(settings.pgsink_dlq_topic, 1)])
    wait_for_topics(admin, [source, settings.pgsink_dlq_topic])
    env = PgEnv(settings, postgres_dsn, schema_registry, source)
    with connect(postgres_dsn) as conn:
        create_table(conn, env.table)
    yield env
    delete_topics(admin, [source, settings.pgsink_dlq_topic])
    with connect(postgres_dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(env.table.ident()))


def test_events_become_rows_with_envelope_columns_and_the_event_as_jsonb(pg: PgEnv) -> None:
    events = [page("u-1", 1), page("u-2", 2), cart("u-1")]
    with Running(PgSink(pg.settings)):
        pg.send(events)
        rows = wait_for(lambda: len(r := pg.rows()) == 3 and r, what="three rows")
        wait_for(lambda: pg.committed() == 3, what="offsets committed")
    by_id = {str(r["event_id"]): r for r in rows}
    assert set(by_id) == {e["event_id"] for e in events}
    row = by_id[events[2]["event_id"]]
    assert row["type"] == "cart.item_added" and row["user_id"] == "u-1"
    assert row["occurred_at"].isoformat() == "2026-11-28T11:30:00.123456+00:00"
    assert row["received_at"] >= row["occurred_at"]
    assert row["source"] == "test" and row["topic"] == pg.source
    assert 0 <= row["partition"] < PARTITIONS and row["offset"] >= 0
    assert row["event"]["unit_price"] == "19.99"  # exact, as a string
    assert row["event"]["quantity"] == 2 and row["event"]["event_id"] == events[2]["event_id"]
    assert row["event"]["occurred_at"] == 1_795_865_400_123_456  # timestamp-micros, as sent
    viewed = by_id[events[0]["event_id"]]
    assert viewed["event"]["url"] == "https://shop.example/p/1"
    # The jsonb is queryable as such.
    with psycopg.connect(pg.dsn) as conn:
        found = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE event->>'path' = '/p/2'").format(
                pg.table.ident()
            )
        ).fetchone()
    assert found == (1,)


def test_the_same_event_id_sent_twice_is_one_row(pg: PgEnv) -> None:
    event = page("u-dup", 7)
    sink = PgSink(pg.settings)
    with Running(sink):
        pg.send([event, event])
        pg.send([event, page("u-dup", 8)])
        wait_for(lambda: pg.committed() == 4, what="all four records committed")
    rows = pg.rows()
    assert sorted(str(r["event_id"]) for r in rows).count(event["event_id"]) == 1
    assert len(rows) == 2
    assert sink.counts.skipped["duplicate"] == 2 and sink.counts.processed == 2


def test_the_type_filter_keeps_only_wanted_types(pg: PgEnv) -> None:
    settings = pg.settings.model_copy(update={"pgsink_types": "cart.*"})
    wanted = cart("u-3")
    with Running(PgSink(settings)) as running:
        pg.send([page("u-3", 1), wanted, page("u-4", 2)])
        wait_for(lambda: pg.committed() == 3, what="every record committed, filtered or not")
    assert [str(r["event_id"]) for r in pg.rows()] == [wanted["event_id"]]
    assert running.sink.counts.skipped["filtered"] == 2


def test_a_type_filter_that_matches_no_catalog_type_names_the_setting(pg: PgEnv) -> None:
    from keel.connectors.pgsink import PgSinkError

    with pytest.raises(PgSinkError, match=r"KEEL_PGSINK_TYPES: 'nope\.\*' matches no event type"):
        PgSink(pg.settings.model_copy(update={"pgsink_types": "page.viewed, nope.*"}))


def test_an_undecodable_record_is_dead_lettered_and_later_events_still_land(pg: PgEnv) -> None:
    raw = make_producer(pg.settings)
    raw.produce(pg.source, key=b"poison", value=b"not keel avro", partition=0)
    assert raw.flush(30) == 0
    after = [page(f"u-{n}", n) for n in range(6)]  # some of them on partition 0, behind it
    with Running(PgSink(pg.settings)):
        pg.send(after)
        wait_for(lambda: len(pg.rows()) == 6, what="the later events")
        wait_for(lambda: pg.committed() == 7, what="offsets committed past the poison")
    letters = read(pg.settings, pg.settings.pgsink_dlq_topic)
    assert [x.value for x in letters] == [b"not keel avro"]
    assert letters[0].key == b"poison"
    assert letters[0].headers[H_REASON] == "undecodable"
    assert letters[0].headers[H_ORIG_TOPIC] == pg.source
    assert letters[0].headers[H_ORIG_PARTITION] == "0"
    assert letters[0].headers[H_ORIG_OFFSET] == "0"
    assert letters[0].headers["keel.error.class"].startswith("keel.schemas.errors.")
    # keel dlq reads the same topic.
    shown = run_keel("dlq", "list", pg.settings.pgsink_dlq_topic, env=pg.env())
    assert shown.returncode == 0, shown.stderr
    assert "undecodable" in shown.stdout


class Crash(Exception):
    pass


def test_a_sink_stopped_between_db_commit_and_offset_commit_rewrites_nothing_twice(
    pg: PgEnv,
) -> None:
    first = [page(f"u-{n % 5}", n) for n in range(40)]
    pg.send(first)

    def crash(batch: Batch) -> None:
        raise Crash(f"stopped after writing {len(batch.items)} rows")

    sink = PgSink(pg.settings, after_write=crash)
    running = Running(sink)
    with running:
        wait_for(lambda: running.error is not None, what="the sink stopped by the hook")
    assert isinstance(running.error, Crash)
    written = len(pg.rows())
    assert written > 0 and pg.committed() == 0  # rows in the table, no offset committed

    second = [page(f"u-{n % 5}", n) for n in range(40, 60)]
    pg.send(second)
    restarted = PgSink(pg.settings)
    with Running(restarted):
        wait_for(lambda: pg.committed() == 60, what="everything committed after the restart")
    ids = [str(r["event_id"]) for r in pg.rows()]
    assert sorted(ids) == sorted(e["event_id"] for e in first + second)  # none lost, no dups
    assert restarted.counts.skipped["duplicate"] == written  # re-read, dropped by the primary key


def test_keel_pgsink_run_killed_with_sigkill_and_restarted_loses_nothing(
    pg: PgEnv, tmp_path: Path
) -> None:
    # Small batches, each one DB commit and one offset commit: the kill lands mid-stream.
    env = pg.env(KEEL_PGSINK_BATCH_SIZE="10", KEEL_PGSINK_HTTP_PORT="0")
    first = [page(f"u-{n % 7}", n) for n in range(3000)]
    pg.send(first)
    argv = [KEEL, "pgsink", "run"]
    sink = KeelProcess.start(argv, env, tmp_path / "sink-1.log", name="the first sink")
    try:
        wait_for(lambda: pg.count() >= 300, 60, "the sink writing")
    finally:
        sink.kill()
    assert pg.count() < len(first), "the sink finished before the kill: nothing was tested"
    second = [page(f"u-{n % 7}", n) for n in range(3000, 3100)]
    pg.send(second)
    again = KeelProcess.start(argv, env, tmp_path / "sink-2.log", name="the restarted sink")
    try:
        wait_for(lambda: pg.committed() == 3100, 120, "everything committed after the restart")
    finally:
        again.stop_gracefully(30)
    ids = [str(r["event_id"]) for r in pg.rows()]
    assert sorted(ids) == sorted(e["event_id"] for e in first + second)


class Proxy:
    """A TCP forwarder to PostgreSQL on a port of its own, to switch the database off and
    on under a running sink."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.conns:
            conn.close()


def test_a_database_outage_commits_no_offsets_and_recovers(pg: PgEnv) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg.dsn)
    proxy = Proxy((str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))))
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, host="127.0.0.1", port=proxy.port)
    settings = pg.settings.model_copy(update={"pgsink_dsn": SecretStr(dsn)})
    events = [page(f"u-{n % 4}", n) for n in range(30)]
    sink = PgSink(settings)
    try:
        with Running(sink):
            pg.send(events)
            # Nothing listens on the sink's database port: writes fail and are retried.
            wait_for(
                lambda: sink.counts.failures >= 3,
                what="three failed writes",
            )
            assert pg.committed() == 0 and pg.rows() == []
            assert not sink.ready
            proxy.start()  # the database is back
            wait_for(lambda: pg.committed() == 30, what="offsets committed after recovery")
            assert sink.ready
        assert sorted(str(r["event_id"]) for r in pg.rows()) == sorted(
            e["event_id"] for e in events
        )
    finally:
        proxy.stop()


# --- the console script ------------------------------------------------------------------


def test_cli_init_run_status(pg: PgEnv, tmp_path: Path) -> None:
    table = f"cli_events_{uuid.uuid4().hex[:8]}"
    env = pg.env(KEEL_PGSINK_TABLE=table, KEEL_PGSINK_PROGRESS_INTERVAL_S="0.5")
    try:
        missing = run_keel("pgsink", "status", env=env)
        assert missing.returncode == 1
        assert "does not exist: run `keel pgsink init` first" in missing.stderr
        for _ in range(2):
            init = run_keel("pgsink", "init", env=env)
            assert init.returncode == 0, init.stderr
            assert f"events table {table} ready" in init.stdout
        events = [page("u-cli", n) for n in range(5)]
        pg.send(events)
        port = free_port()
        sink = KeelProcess.start(
            [KEEL, "pgsink", "run", "--http-port", str(port)],
            env,
            tmp_path / "sink.log",  # its JSON log: `run` prints nothing else
            port=port,
            name="keel pgsink run",
        )
        try:
            wait_for(lambda: pg.committed() == 5, 60, "keel pgsink run writes and commits")
            assert sink.get("/readyz")[0] == 200
            assert sink.get("/healthz")[0] == 200
            assert (
                'keel_consumer_processed_total{component="pgsink"} 5.0' in sink.get("/metrics")[1]
            )
            status = run_keel("pgsink", "status", "--json", env=env)
            assert status.returncode == 0, status.stderr
            figures = json.loads(status.stdout)
            assert figures["rows"] == 5 and figures["lag"] == 0
            assert figures["newest_occurred_at"] == "2026-11-28T10:00:04+00:00"
            text = run_keel("pgsink", "status", env=env)
            assert "rows:    5" in text.stdout and "lag:     0" in text.stdout
        finally:
            code = sink.stop()  # SIGTERM; SIGKILL (and a failure below) after 30 s
        assert code == 0, sink.tail()
        lines = [json.loads(line) for line in sink.log.read_text().splitlines() if line.strip()]
        progress = [e for e in lines if e["msg"].startswith("pgsink progress")]
        assert progress and progress[-1]["processed"] == 5
    finally:
        with connect(pg.dsn) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


@pytest.mark.parametrize("command", ["init", "status", "run"])
def test_cli_unreachable_database_is_one_line_and_exit_1(pg: PgEnv, command: str) -> None:
    closed = f"postgresql://keel:keel@127.0.0.1:{free_port()}/keel"
    result = run_keel("pgsink", command, env=pg.env(KEEL_PGSINK_DSN=closed))
    assert result.returncode == 1
    assert result.stderr.startswith("keel: error: cannot connect to PostgreSQL at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_malformed_dsn_names_the_setting(pg: PgEnv) -> None:
    result = run_keel("pgsink", "status", env=pg.env(KEEL_PGSINK_DSN="not a dsn"))
    assert result.returncode == 1
    assert result.stderr.startswith("keel: error: KEEL_PGSINK_DSN: ")


def test_cli_unreachable_broker_is_one_line_and_exit_1(pg: PgEnv) -> None:
    # `run` only: `status` reads the lag through keel.lag, whose one line for unreachable
    # brokers tests/keel/test_lag.py checks (each case waits out a timeout)
    env = pg.env(KEEL_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    result = run_keel("pgsink", "run", env=env)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("keel: error: Kafka at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_row_postgresql_refuses_is_dead_lettered_and_the_rest_of_its_batch_lands(
    pg: PgEnv,
) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:  # a rule someone added later
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CHECK (user_id <> 'banned')").format(pg.table.ident())
        )
    good = [page("u-ok", n) for n in range(5)]
    bad = page("banned", 9)
    sink = PgSink(pg.settings)
    with Running(sink):
        pg.send([*good[:2], bad, *good[2:]])
        wait_for(lambda: pg.committed() == 6, what="every record committed")
    assert sorted(str(r["event_id"]) for r in pg.rows()) == sorted(e["event_id"] for e in good)
    [letter] = read(pg.settings, pg.settings.pgsink_dlq_topic)
    assert letter.headers[H_REASON] == "rejected"
    assert "check constraint" in letter.error and letter.key == b"banned"
    assert letter.headers["keel.error.class"] == "psycopg.errors.CheckViolation"
    assert sink.counts.processed == 5 and sum(sink.counts.dead_lettered.values()) == 1
