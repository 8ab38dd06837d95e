"""The fault suite's shared cluster: three local Kafka brokers (KRaft, combined nodes), a
registry on them, and what a fault test needs to read the cluster and break it.

One cluster serves every fault test of the session (starting three JVMs is the costly
part); each test owns its topics, created here with replication 3 and min.insync.replicas
2 stated explicitly, never left to the brokers' defaults. Failure detection is shortened
(a dead or frozen broker is fenced after 6 s, a lagging follower leaves the ISR after 8 s) so a
fault round takes seconds; what happens once detected is Kafka's and Keel's own.

Each broker also has a client listener reached through a proxy (`EXTERNAL`, advertised at
the proxy's port): a client bootstrapped at `proxied_bootstrap` talks to the brokers only
through Toxiproxy (tests/faults/toxiproxy.py), which a network-fault test starts; brokers
talk to each other, and the test reads the truth, over the direct listener.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from keel.errors import LocalStackError
from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.local.broker import HOST, BrokerNode, LocalKafka
from keel.local.ports import free_base_port, free_port
from keel.producers.services import services
from keel.settings import KeelSettings, get_settings
from tests.harness import start_registry
from tests.polling import wait_for

REPLICATION = 3
MIN_ISR = 2
FAST_DETECTION = {
    "broker.session.timeout.ms": 6000,  # a dead broker is fenced (its leaderships move)
    "broker.heartbeat.interval.ms": 1500,
    "replica.lag.time.max.ms": 8000,  # a follower this far behind leaves the ISR
}


@dataclass(frozen=True)
class PartitionState:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class ProxiedKafka(LocalKafka):
    """A LocalKafka whose nodes also listen on `EXTERNAL` (node -> (port it binds, port of the
    proxy in front of it, which it advertises)), for clients to reach through a proxy."""

    def __init__(self, *args: Any, external: dict[int, tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.external = external

    def _write_config(self, node: BrokerNode) -> None:
        super()._write_config(node)
        listen, proxied = self.external[node.node_id]
        props = dict(
            line.split("=", 1) for line in node.config_file.read_text().splitlines() if line
        )
        props["listeners"] += f",EXTERNAL://{HOST}:{listen}"
        props["advertised.listeners"] += f",EXTERNAL://{HOST}:{proxied}"
        props["listener.security.protocol.map"] += ",EXTERNAL:PLAINTEXT"
        node.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


@dataclass
class FaultCluster:
    """Three brokers and a registry; `kill`/`pause` break a node, `heal` mends them all."""

    kafka: LocalKafka
    registry_url: str
    root: Path
    admin: AdminClient = field(init=False)
    paused: set[int] = field(default_factory=set)
    frozen: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap()

    @property
    def external(self) -> dict[int, tuple[int, int]]:
        """node -> (its EXTERNAL listener's port, the port of the proxy it advertises)."""
        assert isinstance(self.kafka, ProxiedKafka)
        return self.kafka.external

    @property
    def proxied_bootstrap(self) -> str:
        """Bootstrap servers through the proxies: every connection of such a client passes
        through them (the brokers advertise the proxies' ports on that listener)."""
        return ",".join(f"{HOST}:{proxied}" for _listen, proxied in self.external.values())

    # -- topics ---------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 3) -> str:
        """`name` with replication 3 and min.insync.replicas 2, whatever the defaults say."""
        spec = TopicSpec(name, partitions, REPLICATION, {"min.insync.replicas": str(MIN_ISR)})
        ensure_topics(self.admin, [spec])
        wait_for_topics(self.admin, [name])
        return name

    def partitions(self, topic: str) -> dict[int, PartitionState]:
        """Leader, replicas and ISR of each partition. A frozen broker (SIGSTOP) keeps its
        connections open and answers nothing: a request it swallowed is asked again, of
        whichever broker librdkafka picks next."""

        def read() -> dict[int, PartitionState] | None:
            try:
                meta = self.admin.list_topics(topic, timeout=5).topics[topic]
            except KafkaException:
                return None
            if meta.error is not None:
                return None
            return {
                p.id: PartitionState(p.leader, tuple(p.replicas), tuple(sorted(p.isrs)))
                for p in meta.partitions.values()
            }

        return wait_for(read, 60, f"the metadata of {topic}", interval=0.2)

    def min_isr(self, topic: str) -> int:
        resource = ConfigResource(ResourceType.TOPIC, topic)

        def read() -> int | None:  # a broker may not know a topic just created yet
            try:
                configs = self.admin.describe_configs([resource])[resource].result(timeout=10)
            except KafkaException:
                return None
            return int(configs["min.insync.replicas"].value)

        return int(wait_for(read, 60, f"the configs of {topic}", interval=0.5))

    def assert_meaningful(self, topic: str) -> dict[int, PartitionState]:
        """What makes a fault on `topic` meaningful: every partition has three replicas, all
        in sync, and acks=all needs two of them. Returns the partitions' state."""
        assert self.min_isr(topic) == MIN_ISR, f"{topic}: min.insync.replicas is not {MIN_ISR}"
        state = self.wait_in_sync(topic)
        for p, s in state.items():
            assert len(s.replicas) == REPLICATION, f"{topic}[{p}] replicas {s.replicas}"
        return state

    def wait_in_sync(self, topic: str, timeout: float = 90) -> dict[int, PartitionState]:
        """Until every partition of `topic` has a leader and all its replicas in the ISR."""

        def in_sync() -> dict[int, PartitionState] | None:
            state = self.partitions(topic)
            ok = all(s.leader > 0 and set(s.isr) == set(s.replicas) for s in state.values())
            return state if ok else None

        return wait_for(in_sync, timeout, f"every replica of {topic} in sync", interval=0.5)

    def wait_leader(self, topic: str, partition: int, not_on: int, timeout: float = 60) -> int:
        """Until `partition` is led by a broker other than `not_on`; that broker's id."""

        def moved() -> int | None:
            leader = self.partitions(topic)[partition].leader
            return leader if leader > 0 and leader != not_on else None

        return int(wait_for(moved, timeout, f"a new leader of {topic}[{partition}]", 0.2))

    def wait_isr(
        self, topic: str, partition: int, isr: set[int], timeout: float = 60
    ) -> PartitionState:
        """Until `topic[partition]`'s ISR is exactly `isr`."""

        def reached() -> PartitionState | None:
            state = self.partitions(topic)[partition]
            return state if set(state.isr) == isr else None

        return wait_for(reached, timeout, f"ISR of {topic}[{partition}] = {sorted(isr)}", 0.2)

    # -- faults ---------------------------------------------------------------------------
    def pid(self, node: int) -> int:
        pid = self.kafka.nodes()[node - 1].process.pid()
        assert pid is not None, f"broker {node} is not running"
        return pid

    def kill(self, node: int) -> None:
        """SIGKILL broker `node`, as a crash (no controlled shutdown, no flush)."""
        self.pid(node)
        self.kafka.kill_node(node)

    def pause(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGCONT)
        self.paused.discard(node)

    def restart(self, node: int) -> None:
        """Start broker `node` again (after a SIGKILL it first recovers its logs: on a busy
        machine that takes minutes)."""
        try:
            self.kafka.start_node(node, timeout=240)
        except LocalStackError as exc:
            tail = self.kafka.nodes()[node - 1].process.tail(30)
            raise AssertionError(f"{exc}; its log ends:\n{tail}") from exc

    def running(self) -> list[int]:
        return [n.node_id for n in self.kafka.running_nodes()]

    def freeze(self, path: Path) -> None:
        """`path` (a folder of a broker's log dir) unwritable, even to root: the immutable
        attribute (chattr +i), which ext4 enforces on files already open too."""
        done = subprocess.run(
            ["chattr", "-R", "+i", str(path)], capture_output=True, text=True, check=False
        )
        self.frozen.append(path)
        if done.returncode != 0:  # not root (CAP_LINUX_IMMUTABLE), or a filesystem without it
            pytest.skip(f"cannot make a log dir unwritable here: {done.stderr.strip()}")

    def thaw(self) -> None:
        for path in self.frozen:
            subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=True)
        self.frozen.clear()

    def stop(self, node: int) -> None:
        """Stop broker `node` gracefully (SIGTERM)."""
        self.kafka.nodes()[node - 1].process.stop(timeout=60)

    def heal(self) -> None:
        """Every node running, unpaused and writable, three brokers registered."""
        self.thaw()
        for node in list(self.paused):
            self.resume(node)
        for node in (1, 2, 3):
            if node not in self.running():
                self.restart(node)
        wait_for(lambda: len(self.admin.list_topics(timeout=5).brokers) == 3, 90, "three brokers")


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in kB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _start_cluster(root: Path, attempts: int = 2) -> LocalKafka:
    """Three brokers on free ports. A port found free can be taken before the broker binds
    it (other test runs share the machine): a broker that dies starting is tried again on
    other ports, once, with its log's tail in the error if that fails too."""
    settings = get_settings()
    for attempt in range(1, attempts + 1):
        # Below the ephemeral range, as the brokers' own (keel.local.ports): a pair per node.
        pairs = {n: (base := free_base_port(), base + 1) for n in (1, 2, 3)}
        kafka = ProxiedKafka(
            root / f"try-{attempt}", libs_home=settings.home, version=settings.kafka_version,
            brokers=3, base_port=free_base_port(3), heap="384m", die_with_parent=True,
            overrides=FAST_DETECTION, external=pairs,
        )  # fmt: skip
        try:
            kafka.up(progress=lambda _m: None)
            return kafka
        except LocalStackError as exc:
            tails = "\n".join(f"broker {n.node_id}: {n.process.tail(5)}" for n in kafka.nodes())
            kafka.down(progress=lambda _m: None)
            if attempt == attempts:
                raise AssertionError(f"{exc}\n{tails}") from exc
            print(f"--- the fault cluster did not start ({exc}), trying other ports:\n{tails}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    root = tmp_path_factory.mktemp("fault-cluster")
    kafka = _start_cluster(root / "kafka")
    registry = None
    try:
        registry, url = start_registry(
            root / "registry", free_port(), f"_schemas-faults-{uuid.uuid4().hex[:8]}",
            KEEL_BOOTSTRAP_SERVERS=kafka.bootstrap(),
        )  # fmt: skip
        cluster = FaultCluster(kafka, url, root)
        yield cluster
    finally:
        if registry is not None:
            registry.stop()
        kafka.down(progress=lambda _m: None)
        for node in kafka.nodes():  # the logs stay with pytest's temporary folders
            shutil.rmtree(node.data_dir, ignore_errors=True)


@pytest.fixture
def healed(fault_cluster: FaultCluster) -> Iterator[FaultCluster]:
    """The shared cluster, whole before the test and mended after it (whatever failed)."""
    fault_cluster.heal()
    yield fault_cluster
    fault_cluster.heal()


# -- the ingestion front: two `keel ingest` replicas behind nginx ---------------------------
@dataclass
class IngestFront:
    url: str
    key: str
    topic: str
    settings: KeelSettings
    stack: list[Any]

    def replica_pids(self) -> list[int]:
        return [pid for s in self.stack if s.name.startswith("ingest") if (pid := s.process.pid())]


@pytest.fixture
def ingest_front(healed: FaultCluster, tmp_path: Path) -> Iterator[IngestFront]:
    """The local stack's ingestion (`keel up`: two replicas behind nginx) on the fault
    cluster, writing to an `events` topic of this test's own (RF 3, min ISR 2)."""
    yield from start_ingest_front(healed, tmp_path, healed.bootstrap)


def start_ingest_front(
    healed: FaultCluster, tmp_path: Path, bootstrap: str
) -> Iterator[IngestFront]:
    """`ingest_front`, its replicas bootstrapped at `bootstrap` (the proxies, for a network
    fault between ingestion and the brokers)."""
    prefix = f"faults-{uuid.uuid4().hex[:8]}-"
    topic = healed.create_topic(prefix + "events")
    settings = KeelSettings(
        home=tmp_path / "home", bootstrap_servers=bootstrap,
        schema_registry_url=healed.registry_url, ingest_topic_prefix=prefix,
        ingest_replica_ports=f"{free_port()},{free_port()}", ingest_lb_port=free_port(),
    )  # fmt: skip
    stack = sorted(services(settings), key=lambda s: s.order)
    said: list[str] = []
    try:
        for service in stack:
            service.die_with_parent = True  # a killed test run takes them along
            service.start(said.append)
        key = next(m.split(": ")[1] for m in said if m.startswith("development API key"))
        yield IngestFront(
            f"http://127.0.0.1:{settings.ingest_lb_port}", key, topic, settings, stack
        )
    finally:
        for service in reversed(stack):
            if service.process.is_running():
                print(f"--- {service.name}:\n{service.process.tail(15)}")
            service.stop(said.append)
        healed.heal()  # after a test failed mid-fault: no broker left frozen or down
        delete_topics(healed.admin, [topic])


# -- the results table ----------------------------------------------------------------------
RESULTS_ENV = "FAULTS_RESULTS"  # a JSON-lines file each fault test appends its row to


@dataclass
class FaultRow:
    scenario: str
    repetitions: int
    acknowledged: int
    lost: int
    duplicated: int
    refused_503: int
    note: str = ""

    def record(self) -> None:
        """Append to $FAULTS_RESULTS (when set), with the commit the suite ran on."""
        path = os.environ.get(RESULTS_ENV)
        if not path:
            return
        row = {
            **self.__dict__,
            "commit": keel_commit(),
            "at": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        }
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def keel_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            cwd=Path(__file__).parent, check=False, timeout=10,
        )  # fmt: skip
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def repetitions(config: pytest.Config) -> int:
    """How many times a scenario repeats its fault: half of --fault-iterations (one in the
    default run, ten in `make faults`)."""
    iterations = int(config.getoption("--fault-iterations", default=2))
    return max(1, iterations // 2)
