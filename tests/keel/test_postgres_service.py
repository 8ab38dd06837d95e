"""The local stack's PostgreSQL after a crash: killed with SIGKILL (as a power cut or an
ended session leaves it), it must come back through `start` once its WAL is replayed,
instead of failing on its first connection while it recovers."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psycopg
import pytest

from keel.errors import LocalStackError
from keel.local.ports import free_port
from keel.local.services import PostgresService
from keel.settings import KeelSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_killed_postgres_starts_again_with_its_committed_rows(tmp_path: Path) -> None:
    dsn = f"postgresql://keel:keel@127.0.0.1:{free_port()}/keel"
    service = PostgresService(KeelSettings(home=tmp_path, postgres_dsn=dsn))  # type: ignore[arg-type]
    quiet = lambda _m: None  # noqa: E731
    try:
        service.start(quiet)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept SELECT generate_series(1, 2000000)")
        pid = service.process.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # no shutdown checkpoint: the next start must recover
        service.process.stop()  # reap it and its pid file; the children exit with it
        assert service.start(quiet) is True
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2000000,)
        assert service.healthy()
    finally:
        service.stop(quiet)
        shutil.rmtree(service.data_dir, ignore_errors=True)


def test_a_start_that_fails_after_the_process_is_up_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    # The server starts, then creating the database fails (a name psql cannot take bare).
    dsn = f"postgresql://keel:keel@127.0.0.1:{free_port()}/bad-name"
    service = PostgresService(KeelSettings(home=tmp_path, postgres_dsn=dsn))  # type: ignore[arg-type]
    try:
        with pytest.raises(LocalStackError, match="psql"):
            service.start(lambda _m: None)
        assert service.process.pid() is None  # stopped, pid file gone
        assert not service.healthy()
    finally:
        service.stop(lambda _m: None)
        shutil.rmtree(service.data_dir, ignore_errors=True)
