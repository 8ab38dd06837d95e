"""The record of done jobs: a job's idempotency key is written with its outcome once its side
effect is done, and a job whose key is already there is skipped. Redis (SET NX with a TTL)
or PostgreSQL (a primary key, outcome in the same row), chosen by
`KEEL_JOBS_IDEMPOTENCY_STORE`.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from keel.consumers.errors import JobConfigError, StoreError
from keel.settings import KeelSettings


class DoneStore(ABC):
    """Done keys per job type (`scope`). Thread-safe: runners of one worker share it."""

    @abstractmethod
    def done_keys(self, scope: str, keys: Iterable[str]) -> set[str]:
        """Which of these keys are done (one round trip for a batch)."""

    @abstractmethod
    def mark_done(self, scope: str, key: str, outcome: Mapping[str, Any] | None) -> bool:
        """Record a key with its outcome, atomically; False if it was already there."""

    @abstractmethod
    def outcome(self, scope: str, key: str) -> dict[str, Any] | None:
        """The outcome recorded for a done key, None if not done."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreError unless the store answers."""

    def close(self) -> None:
        return None


class RedisDoneStore(DoneStore):
    """`keel:jobs:done:<scope>:<key>` = outcome JSON, written with SET NX EX (one command, so
    the key and its outcome appear together or not at all)."""

    def __init__(
        self, url: str, ttl_seconds: int = 30 * 86400, prefix: str = "keel:jobs:done"
    ) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self.ttl = ttl_seconds
        self.prefix = prefix
        self.url = url

    def _key(self, scope: str, key: str) -> str:
        return f"{self.prefix}:{scope}:{key}"

    def done_keys(self, scope: str, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        try:
            values = self._redis.mget([self._key(scope, k) for k in keys])
        except self._errors as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc
        return {k for k, v in zip(keys, values, strict=True) if v is not None}

    def mark_done(self, scope: str, key: str, outcome: Mapping[str, Any] | None) -> bool:
        value = json.dumps(dict(outcome or {}), default=str)
        try:
            return bool(self._redis.set(self._key(scope, key), value, nx=True, ex=self.ttl))
        except self._errors as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc

    def outcome(self, scope: str, key: str) -> dict[str, Any] | None:
        try:
            value = self._redis.get(self._key(scope, key))
        except self._errors as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc
        return None if value is None else dict(json.loads(value))

    def ping(self) -> None:
        try:
            self._redis.ping()
        except self._errors as exc:
            raise StoreError(f"redis {self.url}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()


_PG_TABLE = """
CREATE TABLE IF NOT EXISTS keel_jobs_done (
    job_type text NOT NULL,
    key text NOT NULL,
    outcome jsonb NOT NULL,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_type, key)
);
CREATE INDEX IF NOT EXISTS keel_jobs_done_done_at ON keel_jobs_done (done_at)
"""


class PostgresDoneStore(DoneStore):
    """A row per done key in `keel_jobs_done`, the outcome in the same row (one INSERT ... ON
    CONFLICT: atomic). One connection per thread (psycopg connections serialise).

    Keys expire like Redis's: a row older than `ttl_seconds` counts as not done, may be
    written again, and is deleted by `purge_expired`, which `mark_done` runs at most once
    every `purge_every_s` per process, so the table does not grow without bound."""

    PURGE_BATCH = 10_000  # rows per DELETE: short transactions, no long lock on the table

    def __init__(
        self, dsn: str, ttl_seconds: int = 30 * 86400, purge_every_s: float = 3600.0
    ) -> None:
        self.dsn = dsn
        self.ttl = ttl_seconds
        self.purge_every_s = purge_every_s
        self._next_purge = time.monotonic() + purge_every_s
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._created = False

    def _conn(self) -> Any:
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.Error as exc:
                raise StoreError(f"postgres: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
                if not self._created:
                    conn.execute(_PG_TABLE)
                    self._created = True
        return conn

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            cur = self._conn().execute(sql, params)
            return cur.fetchall() if cur.description else [(cur.rowcount,)]
        except psycopg.Error as exc:
            self._local.conn = None  # reconnect next time
            raise StoreError(f"postgres: {exc}") from exc

    def done_keys(self, scope: str, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        rows = self._run(
            "SELECT key FROM keel_jobs_done WHERE job_type = %s AND key = ANY(%s) "
            "AND done_at > now() - make_interval(secs => %s)",
            (scope, keys, self.ttl),
        )
        return {row[0] for row in rows}

    def mark_done(self, scope: str, key: str, outcome: Mapping[str, Any] | None) -> bool:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.purge_every_s
            self.purge_expired()
        # An expired row is overwritten; a live one wins (rowcount 0: already done).
        rows = self._run(
            "INSERT INTO keel_jobs_done (job_type, key, outcome) VALUES (%s, %s, %s::jsonb) "
            "ON CONFLICT (job_type, key) DO UPDATE SET outcome = EXCLUDED.outcome, "
            "done_at = now() WHERE keel_jobs_done.done_at <= now() - make_interval(secs => %s)",
            (scope, key, json.dumps(dict(outcome or {}), default=str), self.ttl),
        )
        return bool(rows and rows[0][0] == 1)

    def outcome(self, scope: str, key: str) -> dict[str, Any] | None:
        rows = self._run(
            "SELECT outcome FROM keel_jobs_done WHERE job_type = %s AND key = %s "
            "AND done_at > now() - make_interval(secs => %s)",
            (scope, key, self.ttl),
        )
        return dict(rows[0][0]) if rows else None

    def purge_expired(self) -> int:
        """Delete expired rows, a batch at a time; return how many went."""
        total = 0
        while True:
            [(count,)] = self._run(
                "DELETE FROM keel_jobs_done WHERE ctid IN (SELECT ctid FROM keel_jobs_done "
                "WHERE done_at <= now() - make_interval(secs => %s) LIMIT %s)",
                (self.ttl, self.PURGE_BATCH),
            )
            total += count
            if count < self.PURGE_BATCH:
                return total

    def ping(self) -> None:
        self._run("SELECT 1", ())

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def open_store(settings: KeelSettings, kind: str | None = None) -> DoneStore:
    """The store named by `KEEL_JOBS_IDEMPOTENCY_STORE` (or `kind`)."""
    kind = kind or settings.jobs_idempotency_store
    if kind == "redis":
        return RedisDoneStore(settings.redis_url, ttl_seconds=settings.jobs_done_ttl_days * 86400)
    if kind == "postgres":
        return PostgresDoneStore(
            settings.postgres_dsn.get_secret_value(),
            ttl_seconds=settings.jobs_done_ttl_days * 86400,
        )
    raise JobConfigError(f"unknown idempotency store {kind!r}: use redis or postgres")
