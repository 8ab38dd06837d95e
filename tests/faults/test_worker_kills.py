"""Views stay exact while stream workers are SIGKILLed and restarted under traffic.

Two (and three) workers in one group; events for many users sent all along, a few batches
resent with the same event_ids; one worker at a time killed (no commit, no flush, no
goodbye) and restarted on its port and data folder, as `keel up` restarts `streams-N`, so
partitions move between workers at every round. At the end every user's `user_activity`
view must count exactly the distinct event_ids on Kafka for that user, read back from the
topic: none short (an offset committed past an effect that was lost) and none over (an
event applied twice).

`make faults` runs the long form (`--fault-iterations 20`); the default run takes a short
one (see tests/conftest.py).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from keel.lag import group_lag
from tests.faults.conftest import FaultEnv, Sender, distinct_on_kafka, first_divergence
from tests.polling import wait_for

# The short form (the README's test command) kills one of two workers twice; three workers
# are the long form (`make faults`: 20 rounds of each).
pytestmark = [pytest.mark.faults]

USERS = 60
PER_ROUND = 1200  # events sent between two kills (~5 s of traffic)


def source_lag(env: FaultEnv, admin: Any) -> tuple[int | None, dict[int, str]]:
    """The group's lag on the source topic (None while it has not committed everywhere), and
    each partition's committed/end offsets, for the message of a drain that never ends."""
    lag = group_lag(admin, env.env["KEEL_STREAMS_APP_ID"])
    parts = [p for p in lag.partitions if p.topic == env.source]
    seen = {p.partition: f"{p.committed}/{p.end}" for p in parts}
    if len(parts) < 8 or any(p.committed is None for p in parts):
        return None, seen
    return sum(p.lag for p in parts), seen


def assert_replicated(env: FaultEnv, admin: Any) -> None:
    """What makes the fault meaningful: the source and every changelog have the replication
    the test asked for, all replicas in sync."""
    app_id = env.env["KEEL_STREAMS_APP_ID"]
    topics = admin.list_topics(timeout=10).topics
    names = [env.source, *(t for t in topics if t.startswith(app_id) and "changelog" in t)]
    assert len(names) > 1, f"no changelog topic of {app_id}"
    for name in names:
        for p in topics[name].partitions.values():
            assert len(p.replicas) == env.replication, (name, p.id, p.replicas)
            assert len(p.isrs) == env.replication, (name, p.id, p.isrs)


def view_counts(env: FaultEnv, users: list[str]) -> dict[str, int | None]:
    """Each user's `page.viewed` count in the view (None: no 200 answer)."""
    out: dict[str, int | None] = {}
    for user in users:
        status, body = env.view("user_activity", user)
        out[user] = int(body["counts"].get("page.viewed", 0)) if status == 200 else None
    return out


@pytest.mark.parametrize("workers", [2, pytest.param(3, marks=pytest.mark.long_form)])
def test_killed_workers_lose_no_event(
    fault_env: FaultEnv, admin: Any, fault_iterations: int, workers: int
) -> None:
    pool = [fault_env.start_worker(wait=False) for _ in range(workers)]
    for worker in pool:
        wait_for(worker.ready, 120, f"{worker.name} ready")
    assert_replicated(fault_env, admin)

    run = uuid.uuid4().hex[:6]
    users = [f"fault-{run}-{i}" for i in range(USERS)]
    sender = Sender(fault_env, users, seed=workers)
    rng = random.Random(workers)
    sender.start()
    try:
        for _ in range(fault_iterations):
            sender.wait_sent(PER_ROUND)
            index = rng.randrange(len(pool))
            pool[index].kill()
            pool[index] = fault_env.restart(pool[index])
            wait_for(pool[index].ready, 240, f"{pool[index].name} ready after its restart")
        sender.wait_sent(PER_ROUND)
    finally:
        sender.stop()

    restarts: list[int] = []
    state: dict[str, Any] = {}

    def drained() -> bool:
        # A stalled worker (/healthz 503, Faust's known stuck fetch, see keel.streams.watchdog) is
        # restarted, as compose or Kubernetes would on its health check.
        for i, worker in enumerate(pool):
            health = worker.get("/healthz")
            state[f"{worker.name} /healthz"] = health
            state[f"{worker.name} /readyz"] = worker.get("/readyz")
            if health[0] == 503:
                worker.stop()
                pool[i] = fault_env.restart(worker)
                restarts.append(worker.port)
        lag, state["committed/end per partition"] = source_lag(fault_env, admin)
        state["lag"] = lag
        return lag == 0

    # A restarted worker restores its tables from the changelogs (a killed worker's local
    # state is discarded, see keel.streams.local_state): on a loaded machine that takes minutes.
    # The wait ends before the test's own timeout, so a drain that never ends says where it is.
    try:
        wait_for(drained, 600 + 120 * (fault_iterations - 2), "the source drained", interval=2.0)
    except AssertionError:
        raise AssertionError(f"the group's lag on the source never reached 0: {state}") from None
    truth = distinct_on_kafka(fault_env, "page.viewed")
    # Every event the broker acknowledged to the sender is on the topic (the truth is whole).
    missing = {u: ids - truth.get(u, set()) for u, ids in sender.acked.items()}
    assert not any(missing.values()), {u: len(m) for u, m in missing.items() if m}
    expected = {u: len(truth.get(u, ())) for u in users}
    assert sum(expected.values()) >= fault_iterations * PER_ROUND

    counts: dict[str, int | None] = {}

    def views_exact() -> bool:
        counts.clear()
        counts.update(view_counts(fault_env, users))
        return counts == expected

    try:
        wait_for(views_exact, 90, "every user's view equal to its distinct event_ids on Kafka")
    except AssertionError:
        short = {u: (counts[u], n) for u, n in expected.items() if (counts[u] or 0) < n}
        over = {u: (counts[u], n) for u, n in expected.items() if (counts[u] or 0) > n}
        raise AssertionError(
            f"{len(short)} of {USERS} users short, {len(over)} over after {fault_iterations} "
            f"kills of {workers} workers ({len(restarts)} stalled restarted), "
            f"{sum(expected.values())} distinct events ({sender.resent} resent); (view, Kafka) "
            f"e.g. short {list(short.items())[:4]} "
            f"over {list(over.items())[:4]}; first wrong changelog records: "
            + "\n".join(first_divergence(fault_env, [*short, *over][:6], "page.viewed"))
        ) from None
    # The row of the results table (bench/RESULTS.md), shown by `pytest -rP`.
    print(
        f"{fault_iterations} kills of {workers} workers on {fault_env.replication} replicas: "
        f"{sum(expected.values())} distinct events ({sender.resent} resent), 0 of {USERS} users "
        f"short, 0 over, {len(restarts)} stalled restarted"
    )
