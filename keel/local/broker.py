"""A real Apache Kafka 4 cluster (KRaft, combined broker+controller nodes) on this host.

One node, or three on distinct ports for fault tests. Node N listens for clients on
`base_port + 100*(N-1)` and for the controller quorum on the port after it.

Secured (`secure=True`), as production clusters are: clients and brokers talk SASL_SSL
(SCRAM-SHA-512, TLS from the local CA of keel.local.security), the controller quorum mutual
TLS, and the standard authorizer denies what no ACL allows. The brokers' own principal
(`admin`, also the super user) is written into the metadata at format time (KIP-900); the
components' principals are created through it once the cluster answers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from keel.errors import KafkaEdgeError, LocalStackError
from keel.kafka import TopicSpec, ensure_topics, kafka_call, wait_for_topics
from keel.local import kafka_dist
from keel.local.process import ManagedProcess, stop_together
from keel.local.security import ADMIN, BROKER_DN, MECHANISM, LocalSecurity

Progress = Callable[[str], None]
READY_TOPIC = "__keel_ready"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class BrokerNode:
    node_id: int
    port: int
    controller_port: int
    process: ManagedProcess
    data_dir: Path
    config_file: Path


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    port: int
    pid: int | None
    log_file: Path


class LocalKafka:
    """The local cluster under `root`: its layout file, node configs, data, pids and logs."""

    def __init__(
        self,
        root: Path,
        *,
        libs_home: Path,
        version: str,
        brokers: int = 1,
        base_port: int = 9092,
        heap: str = "512m",
        die_with_parent: bool = False,
        maven_settings: Path | None = None,
        secure: bool = False,
        security: LocalSecurity | None = None,
        principals: tuple[str, ...] = (),
        overrides: Mapping[str, object] | None = None,
    ) -> None:
        """`overrides`: broker properties written over the defaults below (fault tests
        shorten failure detection with them)."""
        if brokers not in (1, 3):
            raise LocalStackError(f"--brokers must be 1 or 3, not {brokers}")
        self.secure = secure
        self.security = security or LocalSecurity(libs_home / "security")
        self.principals = principals
        self.root = root
        self.libs_home = libs_home
        self.version = version
        self.brokers = brokers
        self.base_port = base_port
        self.heap = heap
        self.die_with_parent = die_with_parent
        self.maven_settings = maven_settings
        self.overrides = dict(overrides or {})

    # -- layout ---------------------------------------------------------------------------
    @property
    def layout_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def nodes(self, count: int | None = None) -> list[BrokerNode]:
        count = count or self.brokers
        result = []
        for n in range(1, count + 1):
            port = self.base_port + 100 * (n - 1)
            node_dir = self.root / f"node-{n}"
            result.append(
                BrokerNode(
                    node_id=n,
                    port=port,
                    controller_port=port + 1,
                    process=ManagedProcess(f"broker-{n}", node_dir, self.log_dir),
                    data_dir=node_dir / "data",
                    config_file=node_dir / "server.properties",
                )
            )
        return result

    def recorded_layout(self) -> dict[str, object] | None:
        try:
            data: dict[str, object] = json.loads(self.layout_file.read_text())
            return data
        except (OSError, ValueError):
            return None

    def bootstrap(self, count: int | None = None) -> str:
        return ",".join(f"{HOST}:{n.port}" for n in self.nodes(count))

    # -- lifecycle ------------------------------------------------------------------------
    def running_nodes(self) -> list[BrokerNode]:
        layout = self.recorded_layout()
        count = int(str(layout["brokers"])) if layout else 3
        return [n for n in self.nodes(count) if n.process.is_running()]

    def up(self, progress: Progress = print, timeout: float = 120.0) -> str:
        """Start the cluster (or reuse the one running) and return its bootstrap address."""
        running = self.running_nodes()
        layout = self.recorded_layout()
        if running and layout and int(str(layout["brokers"])) != self.brokers:
            raise LocalStackError(
                f"a {layout['brokers']}-broker cluster already runs from {self.root}; "
                "stop it first with `keel broker down`"
            )
        if running and layout and bool(layout.get("secure")) != self.secure:
            raise LocalStackError(
                f"a {'secured' if layout.get('secure') else 'plaintext'} cluster already runs "
                f"from {self.root}; stop it first with `keel broker down`"
            )
        if len(running) == self.brokers:
            progress(f"Kafka already running ({self.brokers} broker(s)) at {self.bootstrap()}")
            self._wait_ready(timeout)
            self._ensure_principals(progress)
            return self.bootstrap()

        running_ids = {n.node_id for n in running}
        to_start = [n for n in self.nodes() if n.node_id not in running_ids]
        for node in to_start:  # before any download: a taken port is the likelier mistake
            for port in (node.port, node.controller_port):
                _check_port_free(port)
        java = kafka_dist.java_binary()
        libs = kafka_dist.kafka_libs(self.libs_home, self.version, progress, self.maven_settings)
        if self.secure:
            self.security.ensure()
        cluster_id = self._cluster_id()
        for node in to_start:
            self._write_config(node)
            if not (node.data_dir / "meta.properties").exists():
                self._format(node, libs, java, cluster_id)
            progress(
                f"starting Kafka broker {node.node_id} on {HOST}:{node.port} (log: {node.process.log_file})"
            )
            node.process.start(
                self._java_argv(java, libs, node),
                env=self._env(),
                die_with_parent=self.die_with_parent,
            )
        self._wait_ready(timeout)
        self._ensure_principals(progress)
        secured = f" (SASL_SSL, CA {self.security.ca_file})" if self.secure else ""
        progress(f"Kafka {self.version} ready: bootstrap servers {self.bootstrap()}{secured}")
        return self.bootstrap()

    def client_config(self, principal: str = ADMIN) -> dict[str, Any]:
        """librdkafka security properties for `principal` on this cluster (none if plaintext)."""
        if not self.secure:
            return {}
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": principal,
            "sasl.password": self.security.password(principal),
            "ssl.ca.location": str(self.security.ca_file),
        }

    def client_settings(self, principal: str = ADMIN) -> dict[str, Any]:
        """The KEEL_* settings (as KeelSettings fields) of `principal` on this cluster."""
        if not self.secure:
            return {"bootstrap_servers": self.bootstrap()}
        self.security.password(principal)  # made on first use
        return {
            "bootstrap_servers": self.bootstrap(),
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": principal,
            "sasl_password_file": self.security.password_file(principal),
            "ssl_ca_location": self.security.ca_file,
        }

    def down(self, progress: Progress = print) -> int:
        nodes = {node.process.name: node for node in self.nodes(3)}
        stopped = stop_together([node.process for node in nodes.values()])
        for process in stopped:
            progress(f"stopped Kafka broker {nodes[process.name].node_id}")
        return len(stopped)

    def status(self) -> list[NodeStatus]:
        layout = self.recorded_layout()
        count = int(str(layout["brokers"])) if layout else self.brokers
        return [
            NodeStatus(n.node_id, n.port, n.process.pid(), n.process.log_file)
            for n in self.nodes(count)
        ]

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes()[node_id - 1].process.kill()

    def start_node(self, node_id: int, timeout: float = 60.0) -> None:
        """Start one stopped node of an existing cluster again."""
        node = self.nodes()[node_id - 1]
        if node.process.is_running():
            return
        java = kafka_dist.java_binary()
        libs = kafka_dist.kafka_libs(
            self.libs_home, self.version, maven_settings=self.maven_settings
        )
        node.process.start(
            self._java_argv(java, libs, node), env=self._env(), die_with_parent=self.die_with_parent
        )
        _wait_port(node.port, timeout, node.process)

    # -- internals ------------------------------------------------------------------------
    def _cluster_id(self) -> str:
        layout = self.recorded_layout()
        if (
            layout
            and int(str(layout["brokers"])) == self.brokers
            and layout.get("base_port") == self.base_port
            and bool(layout.get("secure")) == self.secure
        ):
            return str(layout["cluster_id"])
        # A different layout: its data cannot be reused.
        for node in self.nodes(3):
            shutil.rmtree(node.data_dir, ignore_errors=True)
        # A KRaft cluster id is a base64url UUID, as `kafka-storage random-uuid` prints.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout_file.write_text(
            json.dumps(
                {
                    "cluster_id": cluster_id,
                    "brokers": self.brokers,
                    "base_port": self.base_port,
                    "version": self.version,
                    "secure": self.secure,
                }
            )
        )
        return cluster_id

    def _write_config(self, node: BrokerNode) -> None:
        rf = self.brokers
        min_isr = min(2, rf)
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes())
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.data_dir,
            "num.partitions": 3,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 12,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 12,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            # Durability first: never elect a replica that may have lost acknowledged writes.
            "unclean.leader.election.enable": "false",
            # Topics are code: a typo in a topic name fails instead of creating a topic.
            "auto.create.topics.enable": "false",
            # A developer machine: no reason to wait for more members before the first rebalance.
            "group.initial.rebalance.delay.ms": 0,
            **self.overrides,
        }
        if self.secure:
            props.update(self._secure_props(node))
        node.config_file.parent.mkdir(parents=True, exist_ok=True)
        # 0600: a secured node's file holds the brokers' own password.
        fd = os.open(node.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{k}={v}\n" for k, v in props.items()))

    def _secure_props(self, node: BrokerNode) -> dict[str, object]:
        sec = self.security
        # SCRAM cannot authenticate the controller quorum in KRaft (its credentials live in
        # the metadata the quorum serves), so controllers and brokers prove themselves to
        # each other with the brokers' certificate (mutual TLS).
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{sec.password(ADMIN)}";'
        )
        return {
            "listeners": f"SASL_SSL://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"SASL_SSL://{HOST}:{node.port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": sec.broker_keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": sec.ca_file,
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN};User:{BROKER_DN}",
        }

    def _ensure_principals(self, progress: Progress) -> None:
        """Create the SCRAM credentials of the components' principals that lack one (a
        principal added to the ACL file after the cluster was formatted, too)."""
        if not self.secure or not self.principals:
            return
        admin = self._admin()
        with kafka_call("describing SCRAM users", 30):
            # Without a user list, one future for every user's description.
            every = cast(Future, admin.describe_user_scram_credentials(request_timeout=30))
            described = every.result(30)
        missing = [p for p in self.principals if p not in described]
        if not missing:
            return
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(
                p, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                self.security.password(p).encode(),
            )
            for p in missing
        ]  # fmt: skip
        for name, future in admin.alter_user_scram_credentials(upserts).items():
            with kafka_call(f"creating SCRAM user {name}", 30):
                future.result(30)
        progress(f"created SCRAM users: {', '.join(missing)}")

    def set_password(self, principal: str, password: str) -> None:
        """Rotate a principal's password on the running cluster, then in its file."""
        if not self.secure:
            raise LocalStackError("the local cluster is not secured (`keel broker up --secure`)")
        upsert: UserScramCredentialAlteration = UserScramCredentialUpsertion(
            principal, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
        )
        admin = self._admin()  # held: its futures die with it
        for name, future in admin.alter_user_scram_credentials([upsert]).items():
            with kafka_call(f"setting the password of {name}", 30):
                future.result(30)
        self.security.set_password(principal, password)

    def _admin(self) -> AdminClient:
        return AdminClient(
            {
                "bootstrap.servers": self.bootstrap(),
                "socket.timeout.ms": 5000,
                "log_level": 0,
                **self.client_config(ADMIN),
            }
        )

    def _format(self, node: BrokerNode, libs: Path, java: str, cluster_id: str) -> None:
        cmd = [
            java,
            "-cp",
            kafka_dist.classpath(libs),
            f"-Dlog4j2.configurationFile={kafka_dist.log4j_config()}",
            "kafka.tools.StorageTool",
            "format",
            # One argument: a base64url id may start with "-", which argparse takes for a flag.
            f"--cluster-id={cluster_id}",
            "-c",
            str(node.config_file),
            "--ignore-formatted",
        ]
        if self.secure:  # the brokers' own principal must exist before they can talk (KIP-900)
            password = self.security.password(ADMIN)
            cmd += ["--add-scram", f'{MECHANISM}=[name={ADMIN},password="{password}"]']
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip().splitlines()
            raise LocalStackError(
                f"formatting storage of broker {node.node_id} failed: {reason[-1] if reason else '?'}"
            )

    def _java_argv(self, java: str, libs: Path, node: BrokerNode) -> list[str]:
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={kafka_dist.log4j_config()}",
            "-cp",
            kafka_dist.classpath(libs),
            "kafka.Kafka",
            str(node.config_file),
        ]

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CLASSPATH", None)
        return env

    def _wait_ready(self, timeout: float) -> None:
        """Return once a client can create a topic replicated on every node."""
        deadline = time.monotonic() + timeout
        for node in self.nodes():  # a closed port would only make librdkafka log noise
            _wait_port(node.port, timeout, node.process)
        admin = self._admin()
        last_error = ""
        while time.monotonic() < deadline:
            for node in self.nodes():
                if node.process.exited_early():
                    raise LocalStackError(
                        f"Kafka broker {node.node_id} exited during start-up; last log lines "
                        f"({node.process.log_file}):\n{node.process.tail(8)}"
                    )
            try:
                metadata = admin.list_topics(timeout=5)
                if len(metadata.brokers) >= self.brokers:
                    ensure_topics(admin, [TopicSpec(READY_TOPIC, 1, self.brokers)], timeout=10)
                    wait_for_topics(admin, [READY_TOPIC], timeout=10)
                    return
                last_error = f"{len(metadata.brokers)} of {self.brokers} brokers registered"
            except (KafkaException, KafkaEdgeError) as exc:
                last_error = str(exc)
            time.sleep(0.5)
        raise LocalStackError(
            f"Kafka did not become ready within {timeout:.0f}s ({last_error}); logs in {self.log_dir}"
        )


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise LocalStackError(
                f"port {port} on {HOST} is taken by another process; stop it or choose "
                "another base port (KEEL_BROKER_PORT or --port)"
            ) from None


def _wait_port(port: int, timeout: float, process: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.exited_early():
            raise LocalStackError(f"{process.name} exited during start-up; see {process.log_file}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise LocalStackError(f"{process.name} did not open port {port} within {timeout:.0f}s")
