"""Scenario 4: a network fault between ingestion and the brokers, under HTTP load.

The local stack's ingestion (two `keel ingest` replicas behind nginx) reaches the 3-broker
cluster only through Toxiproxy 2.5 (the brokers advertise the proxies' ports on the listener
the replicas use); the test reads the truth over the brokers' direct listener. Each round:
latency (every byte 200 ms late each way), then a cut (a black hole: nothing gets through,
no connection closed), then healing. While cut, every answer is a 503 with Retry-After and
no request sent during the cut is acknowledged; after healing ingestion recovers by itself;
nothing acknowledged is lost; the replicas' memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import (
    FaultCluster,
    FaultRow,
    IngestFront,
    repetitions,
    rss_kb,
    start_ingest_front,
)
from tests.faults.load import HttpLoad, assert_honest, verdict
from tests.faults.toxiproxy import Toxiproxy, toxiproxy
from tests.polling import wait_for

pytestmark = [
    pytest.mark.faults, pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800),
    pytest.mark.long_form,
]  # fmt: skip
LATENCY_MS = 200
# The replicas' memory may grow by this much over the fault at most: their producer queue is
# bounded (KEEL_INGEST_QUEUE_MAX_MESSAGES), and the test's clients keep at most 3 requests of
# 10 events in flight, each answered within the 5 s delivery timeout.
RSS_GROWTH_MAX_KB = 64 * 1024


@pytest.fixture
def proxies(healed: FaultCluster, tmp_path: Path) -> Iterator[Toxiproxy]:
    with toxiproxy(tmp_path / "toxiproxy") as proxy:
        for node, (listen, proxied) in healed.external.items():
            proxy.proxy(f"broker-{node}", listen=proxied, upstream=listen)
        yield proxy


@pytest.fixture
def proxied_front(
    healed: FaultCluster, proxies: Toxiproxy, tmp_path: Path
) -> Iterator[IngestFront]:
    yield from start_ingest_front(healed, tmp_path, healed.proxied_bootstrap)


def test_network_latency_cut_and_healing_between_ingest_and_brokers(
    healed: FaultCluster,
    proxies: Toxiproxy,
    proxied_front: IngestFront,
    request: pytest.FixtureRequest,
) -> None:
    cluster, front, topic = healed, proxied_front, proxied_front.topic
    rounds = repetitions(request.config)
    accepted_while_cut = []
    rss_before = {pid: rss_kb(pid) for pid in front.replica_pids()}
    rss_peak = dict(rss_before)

    def sample_rss() -> None:
        for pid, peak in list(rss_peak.items()):
            rss_peak[pid] = max(peak, rss_kb(pid))

    with HttpLoad(front.url, front.key) as load:
        load.wait_acked(200, 60, "through the proxies before the first fault")
        for n in range(1, rounds + 1):
            cluster.assert_meaningful(topic)  # three replicas in sync, min ISR 2
            proxies.latency(LATENCY_MS)
            slow_from = time.monotonic()
            load.wait_acked(100, 120, f"with {LATENCY_MS} ms latency (round {n})")
            slow = [a for a in load.answers if a.accepted and a.sent_at >= slow_from]
            # The fault's premise: every request acknowledged since waited for the slow
            # network, there (the produce request) and back (the broker's ack).
            assert min(a.answered_at - a.sent_at for a in slow) >= 2 * LATENCY_MS / 1000
            sample_rss()
            proxies.cut()
            cut_at = time.monotonic()
            refused = load.refusals()
            # Every client refused twice: the clients' whole pipeline has met the cut.
            wait_for(
                lambda r=refused: (sample_rss(), load.refusals() >= r + 2 * load.clients)[1],
                120, f"503s with the network cut (round {n})",
            )  # fmt: skip
            accepted_while_cut += load.accepted_between(cut_at, time.monotonic())
            proxies.heal()
            load.wait_acked(200, 120, f"after healing (round {n})")
            sample_rss()
    result = verdict(load, cluster.bootstrap, cluster.registry_url, topic)
    growth = {pid: rss_peak[pid] - rss_before[pid] for pid in rss_before}
    FaultRow(
        "4. network latency, cut and healing between ingestion and the brokers (Toxiproxy)",
        rounds, result.acknowledged, len(result.lost) + len(accepted_while_cut),
        len(result.duplicated), load.refusals(),
        f"2xx while cut: {len(accepted_while_cut)}; replicas' RSS growth "
        f"{', '.join(f'{kb // 1024} MiB' for kb in growth.values())} (bound "
        f"{RSS_GROWTH_MAX_KB // 1024} MiB); {result.copies} resent copies",
    ).record()  # fmt: skip
    assert not accepted_while_cut, f"acknowledged while cut: {accepted_while_cut[:3]}"
    assert load.refusals() >= 2 * load.clients * rounds
    assert_honest(load, result)
    assert all(g <= RSS_GROWTH_MAX_KB for g in growth.values()), f"RSS growth (kB): {growth}"
