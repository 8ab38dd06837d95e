"""Scenario 7 (PostgreSQL part): PostgreSQL restarted under load, with the outbox relay
publishing from it and the PostgreSQL sink writing into it.

Events come in two ways at once: HTTP through nginx, and a service's own transactions that
insert into the outbox table (`keel outbox run` relays them to the same `events` topic, RF
3 and min ISR 2). `keel pgsink run` writes every event of the topic as a row. A private
PostgreSQL serving both is restarted while all of it runs. Afterwards every event
acknowledged over HTTP and every outbox row committed must be exactly one row of the sink's
table: none lost, none doubled (the relay may publish a row twice after a failure; the
sink's primary key on event_id must absorb it).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from keel.local.ports import free_port
from keel.local.services import PostgresService
from keel.settings import KeelSettings
from tests.faults.cluster import FaultCluster, FaultRow, IngestFront, repetitions
from tests.faults.load import HttpLoad, assert_honest, verdict
from tests.polling import wait_for
from tests.processes import KEEL, KeelProcess, run_keel

pytestmark = [
    pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800),
    pytest.mark.long_form,
]  # fmt: skip
TABLE = "fault_events"


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[PostgresService, str]]:
    """A PostgreSQL of this test's own (it is restarted; the session's one is shared)."""
    dsn = f"postgresql://keel:keel@127.0.0.1:{free_port()}/keel"
    service = PostgresService(
        KeelSettings(home=tmp_path / "pg-home", postgres_dsn=dsn), die_with_parent=True
    )
    service.start(progress=lambda _m: None)
    try:
        yield service, dsn
    finally:
        service.stop(progress=lambda _m: None)
        shutil.rmtree(service.data_dir, ignore_errors=True)


@dataclass
class OutboxWriter:
    """A service writing one outbox row per transaction; what failed is written again with
    the same event_id once the database answers (a commit that failed may have committed:
    that row then exists twice, which the relay and the sink must absorb)."""

    dsn: str
    committed: set[str] = field(default_factory=set)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> OutboxWriter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(120)
        assert not self._thread.is_alive(), "the outbox writer did not stop"

    def _run(self) -> None:
        pending: dict[str, Any] | None = None
        n = 0
        while not self._stop.is_set() or pending is not None:
            event = pending or {
                "event_id": str(uuid.uuid4()), "type": "page.viewed",
                "user_id": f"o-{n % 10}", "url": "https://shop.example/", "path": "/o",
            }  # fmt: skip
            n += 1
            try:
                with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                    conn.execute("INSERT INTO keel_outbox (event) VALUES (%s)", (Jsonb(event),))
                self.committed.add(event["event_id"])
                pending = None
                time.sleep(0.02)
            except psycopg.Error:
                self.failures += 1
                pending = event
                time.sleep(0.2)


def _scalar(dsn: str, query: str) -> Any:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute(query).fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def test_postgres_restarted_under_outbox_and_sink(
    healed: FaultCluster,
    ingest_front: IngestFront,
    private_postgres: tuple[PostgresService, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    postgres, dsn = private_postgres
    prefix = ingest_front.settings.ingest_topic_prefix
    dlq = cluster.create_topic(prefix + "pgsink.dlq", partitions=1)
    env = {
        **os.environ, "KEEL_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": cluster.registry_url, "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_INGEST_TOPIC_PREFIX": prefix,  # the relay publishes to this test's topic
        "KEEL_OUTBOX_DSN": dsn, "KEEL_OUTBOX_BACKOFF_MAX_S": "1", "KEEL_OUTBOX_HTTP_PORT": "0",
        "KEEL_OUTBOX_POLL_INTERVAL_S": "1",
        "KEEL_PGSINK_DSN": dsn, "KEEL_PGSINK_TABLE": TABLE, "KEEL_PGSINK_TOPICS": topic,
        "KEEL_PGSINK_GROUP": f"{prefix}pgsink", "KEEL_PGSINK_DLQ_TOPIC": dlq,
        "KEEL_PGSINK_BACKOFF_MAX_S": "1", "KEEL_PGSINK_HTTP_PORT": "0",
        "KEEL_PGSINK_SESSION_TIMEOUT_MS": "6000",
    }  # fmt: skip
    for command in (("outbox", "init"), ("pgsink", "init")):
        done = run_keel(*command, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    relay = KeelProcess.start(
        [KEEL, "outbox", "run"], env, tmp_path / "relay.log", name="the outbox relay"
    )
    sink = KeelProcess.start([KEEL, "pgsink", "run"], env, tmp_path / "sink.log", name="the sink")
    rows = f"SELECT count(*) FROM {TABLE}"
    try:
        with HttpLoad(ingest_front.url, ingest_front.key) as load, OutboxWriter(dsn) as outbox:
            load.wait_acked(200, 60, "before the first restart")
            wait_for(lambda: (_scalar(dsn, rows) or 0) > 0, 120, "the sink writing rows")
            wait_for(lambda: len(outbox.committed) >= 50, 60, "outbox rows committed")
            for n in range(1, rounds + 1):
                cluster.assert_meaningful(topic)
                before = (_scalar(dsn, rows), len(outbox.committed))
                postgres.stop(progress=lambda _m: None)
                load.wait_acked(100, 60, f"over HTTP with PostgreSQL down (round {n})")
                postgres.start(progress=lambda _m: None)
                wait_for(
                    lambda b=before: (_scalar(dsn, rows) or 0) > b[0]
                    and len(outbox.committed) > b[1] + 50,
                    120, f"the sink and the outbox moving again (round {n})",
                )  # fmt: skip
                assert relay.alive() and sink.alive(), "a connector died with PostgreSQL"
        assert outbox.failures > 0, "the outbox writer never met the restart"
        pending = "SELECT count(*) FROM keel_outbox WHERE published_at IS NULL AND error IS NULL"
        wait_for(lambda: _scalar(dsn, pending) == 0, 120, "the relay publishing every row")
        expected = load.acked | outbox.committed
        wait_for(lambda: (_scalar(dsn, rows) or 0) >= len(expected), 180, "every event a row")
        with psycopg.connect(dsn) as conn:
            ids = [str(r[0]) for r in conn.execute(f"SELECT event_id FROM {TABLE}")]
    finally:
        for process in (relay, sink):
            print(f"--- {process.name}:\n{process.tail(15)}")
            process.stop()
    in_table = set(ids)
    lost = expected - in_table
    doubled = len(ids) - len(in_table)
    result = verdict(
        load, cluster.bootstrap, cluster.registry_url, topic, also_sent=outbox.committed
    )
    FaultRow(
        "7. PostgreSQL restarted under the outbox relay and the PostgreSQL sink", rounds,
        len(expected), len(lost) + len(result.lost), doubled, load.refusals(),
        f"{len(outbox.committed)} of them through the outbox; {outbox.failures} writes refused",
    ).record()  # fmt: skip
    assert_honest(load, result)
    assert not lost, f"{len(lost)} events acknowledged or committed to the outbox, not in {TABLE}"
    assert doubled == 0, f"{doubled} rows twice"
    assert in_table == expected
