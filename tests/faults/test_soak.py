"""Scenario 10: the soak. Steady HTTP load for an hour (`make faults SOAK=1`; never in the
default run) with a fault every few minutes, taking turns: the leader of an events
partition SIGKILLed, two brokers of three SIGKILLed, a leader's log dir made unwritable.
Nothing acknowledged may be lost, and the memory (RSS) of each `keel ingest` replica must
stay flat: its median over the last ten minutes within 25% (plus 20 MB of slack) of its
median over minutes five to fifteen, after the warm-up.

`SOAK_MINUTES` and `SOAK_FAULT_EVERY_S` shorten it for a try (defaults 60 and 240)."""

from __future__ import annotations

import os
import statistics
import time

import pytest

from tests.faults.cluster import FaultCluster, FaultRow, IngestFront, rss_kb
from tests.faults.load import HttpLoad, assert_honest, verdict
from tests.polling import wait_for

SOAK = os.environ.get("SOAK") == "1"
pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(3 * 3600),
    pytest.mark.skipif(not SOAK, reason="the soak runs with `make faults SOAK=1`"),
]


def _fault(cluster: FaultCluster, load: HttpLoad, topic: str, turn: int) -> str:
    """Break something (by turn), wait for Kafka to notice, mend it; say what it was."""
    state = cluster.assert_meaningful(topic)[0]
    kind = turn % 3
    if kind == 0:
        cluster.kill(state.leader)
        cluster.wait_leader(topic, 0, not_on=state.leader)
        cluster.restart(state.leader)
        what = f"leader {state.leader} SIGKILLed"
    elif kind == 1:
        down = [b for b in (1, 2, 3) if b != state.leader]
        for broker in down:
            cluster.kill(broker)
        refused = load.refusals()
        wait_for(lambda: load.refusals() >= refused + 2 * load.clients, 120, "503s")
        for broker in down:
            cluster.restart(broker)
        what = f"brokers {down} SIGKILLed"
    else:
        cluster.freeze(cluster.kafka.nodes()[state.leader - 1].data_dir / f"{topic}-0")
        cluster.wait_leader(topic, 0, not_on=state.leader, timeout=120)
        cluster.thaw()
        if state.leader in cluster.running():
            cluster.stop(state.leader)
        cluster.restart(state.leader)
        what = f"leader {state.leader}'s log dir unwritable"
    cluster.wait_in_sync(topic, timeout=180)
    return what


def test_soak(healed: FaultCluster, ingest_front: IngestFront) -> None:
    cluster, topic = healed, ingest_front.topic
    minutes = float(os.environ.get("SOAK_MINUTES", "60"))
    every = float(os.environ.get("SOAK_FAULT_EVERY_S", "240"))
    pids = ingest_front.replica_pids()
    assert len(pids) == 2
    samples: list[tuple[float, list[int]]] = []
    faults: list[str] = []
    start = time.monotonic()
    with HttpLoad(ingest_front.url, ingest_front.key) as load:
        next_fault = start + every
        while (now := time.monotonic()) - start < minutes * 60:
            samples.append((now - start, [rss_kb(pid) for pid in pids]))
            if now >= next_fault:
                faults.append(_fault(cluster, load, topic, len(faults)))
                next_fault = time.monotonic() + every
            acked = len(load.acked)
            wait_for(lambda a=acked: len(load.acked) > a, 120, "load going on")
            time.sleep(10)  # a sample every ten seconds: the pace of the soak, not an effect
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    FaultRow(
        f"10. soak: {minutes:g} min of load, a fault every {every:g} s", len(faults),
        result.acknowledged, len(result.lost), len(result.duplicated), load.refusals(),
        _memory_note(samples, minutes),
    ).record()  # fmt: skip
    assert_honest(load, result)
    for i, pid in enumerate(pids):
        early = [s[1][i] for s in samples if 300 <= s[0] <= 900] or [samples[0][1][i]]
        late = [s[1][i] for s in samples if s[0] >= (minutes - 10) * 60] or [samples[-1][1][i]]
        assert statistics.median(late) <= statistics.median(early) * 1.25 + 20_000, (
            f"ingest replica {pid}: RSS {statistics.median(early)} kB -> {statistics.median(late)} kB"
        )


def _memory_note(samples: list[tuple[float, list[int]]], minutes: float) -> str:
    first, last = samples[min(30, len(samples) - 1)][1], samples[-1][1]
    pairs = ", ".join(f"{a // 1024}->{b // 1024} MB" for a, b in zip(first, last, strict=True))
    return f"ingest replicas' RSS {pairs} over {minutes:g} min"
