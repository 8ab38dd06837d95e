"""The done-key store on a real Redis and a real PostgreSQL: a key is recorded once, with its
outcome, and a batch check answers which keys are done."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from keel.consumers.errors import StoreError
from keel.consumers.idempotency import DoneStore, PostgresDoneStore, RedisDoneStore, open_store
from keel.settings import KeelSettings


@pytest.fixture(params=["redis", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[DoneStore]:
    if request.param == "redis":
        made: DoneStore = RedisDoneStore(request.getfixturevalue("redis_url"), ttl_seconds=60)
    else:
        made = PostgresDoneStore(request.getfixturevalue("postgres_dsn"))
    yield made
    made.close()


def test_mark_once_with_outcome(store: DoneStore) -> None:
    scope, key = f"t-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    assert store.done_keys(scope, [key]) == set()
    assert store.mark_done(scope, key, {"message_id": "<m1>"}) is True
    assert store.mark_done(scope, key, {"message_id": "<m2>"}) is False
    assert store.outcome(scope, key) == {"message_id": "<m1>"}  # the first outcome stays
    assert store.done_keys(scope, [key, "other"]) == {key}
    assert store.done_keys(f"{scope}-x", [key]) == set()  # scopes are separate
    assert store.outcome(scope, "other") is None
    store.ping()


def test_concurrent_marks_only_one_wins(store: DoneStore) -> None:
    scope, key = f"t-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(store.mark_done(scope, key, {"i": i})))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_unreachable_store_raises_store_error() -> None:
    with pytest.raises(StoreError, match="redis"):
        RedisDoneStore("redis://127.0.0.1:1/0").ping()
    with pytest.raises(StoreError, match="postgres"):
        PostgresDoneStore("postgresql://keel:keel@127.0.0.1:1/keel").ping()


def test_open_store_by_setting(redis_url: str) -> None:
    assert isinstance(open_store(KeelSettings(redis_url=redis_url)), RedisDoneStore)
    assert isinstance(open_store(KeelSettings(), kind="postgres"), PostgresDoneStore)


def test_postgres_keys_expire_like_redis_and_are_purged(postgres_dsn: str) -> None:
    import psycopg

    store = PostgresDoneStore(postgres_dsn, ttl_seconds=86400)
    scope, old, fresh = f"t-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()), str(uuid.uuid4())
    try:
        assert store.mark_done(scope, old, {"n": 1}) and store.mark_done(scope, fresh, {"n": 1})
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE keel_jobs_done SET done_at = now() - interval '2 days' "
                "WHERE job_type = %s AND key = %s",
                (scope, old),
            )
        assert store.done_keys(scope, [old, fresh]) == {fresh}  # expired: not done any more
        assert store.outcome(scope, old) is None
        assert store.mark_done(scope, old, {"n": 2}) is True  # written again, fresh outcome
        assert store.outcome(scope, old) == {"n": 2}
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE keel_jobs_done SET done_at = now() - interval '2 days' "
                "WHERE job_type = %s AND key = %s",
                (scope, old),
            )
            assert store.purge_expired() >= 1
            left = conn.execute(
                "SELECT key FROM keel_jobs_done WHERE job_type = %s", (scope,)
            ).fetchall()
        assert left == [(fresh,)]
    finally:
        store.close()
