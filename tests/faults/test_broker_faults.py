"""Brokers failing under HTTP load through nginx: nothing acknowledged is lost.

Each test drives the local stack's ingestion (two `keel ingest` replicas behind nginx) on
the shared 3-broker cluster, into its own `events` topic (replication 3, min ISR 2), with
clients that resend what was not accepted under the same event_ids. It breaks brokers,
heals them, then reads the topic back and compares sets: every acknowledged event_id on
Kafka (lost: none), no event twice unless its client had to send it again (duplicated:
none), every refusal a 503 with Retry-After, and nothing accepted while Kafka could not
store it with two in-sync copies.

`make faults` repeats each fault ten times; the default test run once (`repetitions`).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.cluster import FaultCluster, FaultRow, IngestFront, repetitions
from tests.faults.load import HttpLoad, assert_honest, verdict
from tests.polling import wait_for

# A shared 2-core machine can take minutes to start three brokers: room beyond the default.
pytestmark = [
    pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)
]  # fmt: skip


def test_leader_sigkilled_repeatedly(
    healed: FaultCluster, ingest_front: IngestFront, request: pytest.FixtureRequest
) -> None:
    """Scenario 1: the leader of an events partition SIGKILLed, again and again."""
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    with HttpLoad(ingest_front.url, ingest_front.key) as load:
        load.wait_acked(200, 60, "before the first kill")
        for n in range(1, rounds + 1):
            state = cluster.assert_meaningful(topic)[0]  # three replicas, all in sync
            cluster.kill(state.leader)
            new_leader = cluster.wait_leader(topic, 0, not_on=state.leader)
            assert new_leader in state.isr  # never an out-of-sync replica
            load.wait_acked(150, 90, f"with broker {state.leader} dead (round {n})")
            cluster.restart(state.leader)
            cluster.wait_in_sync(topic)
            load.wait_acked(50, 60, f"after broker {state.leader} came back (round {n})")
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    FaultRow(
        "1. leader of an events partition SIGKILLed under HTTP load", rounds,
        result.acknowledged, len(result.lost), len(result.duplicated), load.refusals(),
        f"{result.copies} resent copies on Kafka",
    ).record()  # fmt: skip
    assert_honest(load, result)


def test_two_of_three_brokers_down(
    healed: FaultCluster, ingest_front: IngestFront, request: pytest.FixtureRequest
) -> None:
    """Scenario 2: two brokers of three SIGKILLed. With one copy left nothing may be
    acknowledged: every answer is a 503 with Retry-After, never a 2xx; once the brokers are
    back, ingestion recovers by itself (nothing restarted but the brokers)."""
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    accepted_while_down = []
    with HttpLoad(ingest_front.url, ingest_front.key) as load:
        load.wait_acked(200, 60, "before the first fault")
        for n in range(1, rounds + 1):
            cluster.assert_meaningful(topic)
            survivor = (n - 1) % 3 + 1
            down = [b for b in (1, 2, 3) if b != survivor]
            for broker in down:
                cluster.kill(broker)
            down_at = time.monotonic()
            refused = load.refusals()
            # Every client refused twice: the clients' whole pipeline has met the fault.
            wait_for(
                lambda r=refused: load.refusals() >= r + 2 * load.clients, 90,
                f"503s with brokers {down} down",
            )  # fmt: skip
            accepted_while_down += load.accepted_between(down_at, time.monotonic())
            for broker in down:
                cluster.restart(broker)
            load.wait_acked(200, 120, f"after brokers {down} came back (round {n})")
            cluster.wait_in_sync(topic)
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    FaultRow(
        "2. two of three brokers SIGKILLed, then restarted", rounds, result.acknowledged,
        len(result.lost) + len(accepted_while_down), len(result.duplicated), load.refusals(),
        f"2xx while two were down: {len(accepted_while_down)}",
    ).record()  # fmt: skip
    assert not accepted_while_down, f"accepted with two brokers down: {accepted_while_down[:3]}"
    assert load.refusals() >= 2 * load.clients * rounds
    assert_honest(load, result)


@pytest.mark.long_form
def test_follower_out_of_isr_then_leader_killed(
    healed: FaultCluster, ingest_front: IngestFront, request: pytest.FixtureRequest
) -> None:
    """Scenario 3: a follower falls out of the ISR (SIGSTOPped: it stops fetching and
    heartbeating, so it is fenced and dropped), events are acknowledged by the two copies
    left, then the leader is SIGKILLed and the frozen follower resumed (which gives the
    KRaft quorum its second voter back). Only the follower still in sync may take over:
    the lagger misses acknowledged events, and unclean election is off."""
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    with HttpLoad(ingest_front.url, ingest_front.key) as load:
        load.wait_acked(200, 60, "before the first fault")
        for n in range(1, rounds + 1):
            state = cluster.assert_meaningful(topic)[0]
            leader = state.leader
            lagger, keeper = (b for b in state.replicas if b != leader)
            cluster.pause(lagger)
            cluster.wait_isr(topic, 0, {leader, keeper}, timeout=90)  # the fault's premise
            load.wait_acked(150, 60, f"by brokers {leader} and {keeper} alone (round {n})")
            cluster.kill(leader)
            cluster.resume(lagger)
            new_leader = cluster.wait_leader(topic, 0, not_on=leader, timeout=120)
            assert new_leader == keeper, f"broker {new_leader} led, not the in-sync {keeper}"
            load.wait_acked(150, 120, f"with broker {leader} dead (round {n})")
            cluster.restart(leader)
            cluster.wait_in_sync(topic)
            load.wait_acked(50, 60, f"after broker {leader} came back (round {n})")
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    FaultRow(
        "3. a follower out of the ISR, then the leader SIGKILLed", rounds, result.acknowledged,
        len(result.lost), len(result.duplicated), load.refusals(),
        f"{result.copies} resent copies on Kafka",
    ).record()  # fmt: skip
    assert_honest(load, result)


@pytest.mark.long_form
def test_log_dir_made_unwritable(
    healed: FaultCluster, ingest_front: IngestFront, request: pytest.FixtureRequest
) -> None:
    """Scenario 8: the partition folder of an events partition's leader made unwritable
    under load. The broker takes the log dir offline (with one log dir, that is the broker);
    leadership moves to an in-sync replica, and nothing acknowledged is lost."""
    cluster, topic = healed, ingest_front.topic
    rounds = repetitions(request.config)
    halted = 0
    with HttpLoad(ingest_front.url, ingest_front.key) as load:
        load.wait_acked(200, 60, "before the first fault")
        for n in range(1, rounds + 1):
            state = cluster.assert_meaningful(topic)[0]
            leader = state.leader
            folder = cluster.kafka.nodes()[leader - 1].data_dir / f"{topic}-0"
            assert folder.is_dir(), folder
            cluster.freeze(folder)
            new_leader = cluster.wait_leader(topic, 0, not_on=leader, timeout=120)
            assert new_leader in state.isr
            load.wait_acked(150, 90, f"with broker {leader}'s log dir unwritable (round {n})")
            halted += leader not in cluster.running()
            cluster.thaw()
            if leader in cluster.running():  # an offline log dir comes back with a restart
                cluster.stop(leader)
            cluster.restart(leader)
            cluster.wait_in_sync(topic)
            load.wait_acked(50, 60, f"after broker {leader} came back (round {n})")
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    FaultRow(
        "8. a leader's log dir made unwritable (chattr +i)", rounds, result.acknowledged,
        len(result.lost), len(result.duplicated), load.refusals(),
        f"the broker halted {halted} of {rounds} times; {result.copies} resent copies",
    ).record()  # fmt: skip
    assert_honest(load, result)
