"""Scenario 9: a client that gives up waiting and sends the same event_ids again is counted
once in the views.

Impatient clients (half a second) post through nginx while the leader of an events
partition is SIGKILLed: requests to that partition outlast their patience, so the clients
resend the same events, and both copies reach Kafka once a new leader is elected. A
`keel streams worker` (internal topics with replication 3) folds the topic into the
`user_activity` view, which must count each user's distinct event_ids exactly: the copies
on Kafka are the point of the test, so it first asserts there are some.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster, FaultRow, IngestFront, repetitions
from tests.faults.load import HttpLoad, assert_honest, verdict
from tests.polling import wait_for
from tests.streams.conftest import StreamsEnv

pytestmark = [
    pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)
]  # fmt: skip


def test_retried_event_ids_counted_once_in_views(
    healed: FaultCluster,
    ingest_front: IngestFront,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    prefix = ingest_front.settings.ingest_topic_prefix
    dlq = cluster.create_topic(prefix + "events.dlq")
    app_id = f"faults-streams-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ, "KEEL_BOOTSTRAP_SERVERS": cluster.bootstrap,
        "KEEL_SCHEMA_REGISTRY_URL": cluster.registry_url, "KEEL_REDIS_URL": redis_url,
        "KEEL_STREAMS_APP_ID": app_id, "KEEL_STREAMS_SOURCE_TOPIC": topic,
        "KEEL_STREAMS_SOURCE_PARTITIONS": "3", "KEEL_STREAMS_DLQ_TOPIC": dlq,
        "KEEL_STREAMS_JOBS_TOPIC_PREFIX": prefix, "KEEL_STREAMS_REPLICATION_FACTOR": "3",
        "KEEL_STREAMS_DATA_DIR": str(tmp_path / "data"),
        "KEEL_STREAMS_CACHE_PREFIX": f"faults:{uuid.uuid4().hex[:8]}:",
        "KEEL_STREAMS_SESSION_TIMEOUT_S": "6", "KEEL_STREAMS_BATCH_WITHIN_S": "0.05",
    }  # fmt: skip
    streams = StreamsEnv(
        env, prefix, topic, dlq, prefix, env["KEEL_STREAMS_CACHE_PREFIX"], tmp_path
    )
    worker = streams.start_worker(wait=False)
    try:
        wait_for(worker.ready, 240, "the stream worker ready")
        with HttpLoad(ingest_front.url, ingest_front.key, timeout=0.5) as load:
            load.wait_acked(200, 60, "before the first kill")
            for n in range(1, rounds + 1):
                state = cluster.assert_meaningful(topic)[0]
                cluster.kill(state.leader)
                cluster.wait_leader(topic, 0, not_on=state.leader)
                load.wait_acked(150, 90, f"with broker {state.leader} dead (round {n})")
                cluster.restart(state.leader)
                cluster.wait_in_sync(topic)
        result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
        assert_honest(load, result)
        # What makes the test meaningful: clients gave up and resent, and copies are on Kafka.
        assert load.statuses[0] > 0, f"no request outlasted the client's patience: {load.statuses}"
        assert result.copies > 0, "no event reached Kafka twice: nothing for the views to dedupe"
        expected = {user: len(ids) for user, ids in load.acked_by_user.items()}

        def counts() -> dict[str, int | None]:
            out: dict[str, int | None] = {}
            for user in expected:
                status, body = streams.view("user_activity", user, worker)
                out[user] = int(body["counts"].get("page.viewed", 0)) if status == 200 else None
            return out

        seen = counts()
        try:
            seen = wait_for(lambda: (c := counts()) == expected and c, 180, "views caught up")
        except AssertionError:
            seen = counts()
        over = sum(max(0, (seen[u] or 0) - n) for u, n in expected.items())
        short = sum(max(0, n - (seen[u] or 0)) for u, n in expected.items())
        FaultRow(
            "9. client resending the same event_ids after a timeout (views)", rounds,
            result.acknowledged, short, over, load.refusals(),
            f"{load.statuses[0]} client timeouts, {result.copies} copies on Kafka",
        ).record()  # fmt: skip
        assert seen == expected, f"views count {over} events twice and miss {short}"
    finally:
        print(f"--- stream worker:\n{worker.digest()}")
        worker.stop()
