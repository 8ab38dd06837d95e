"""Thin factories over confluent-kafka: every Keel client is built here with safe defaults.

Durability defaults (see DESIGN.md): producers use `acks=all` with idempotence;
consumers read committed data only and never auto-commit, so offsets move after the
side effect is done. Every topic a Keel component creates goes through `ensure_topics`,
the one place that decides its replication: the operator's `KEEL_REPLICATION_FACTOR` and
`KEEL_MIN_INSYNC_REPLICAS` when set, else the cluster's own defaults.

Security (TLS, SASL) is rendered here once for both client stacks: `security_config` for
librdkafka (confluent-kafka), `aiokafka_security` and `faust_credentials` for aiokafka and
Faust. A connection that fails for a security reason (wrong password, untrusted CA, missing
ACL) becomes one line naming the cause (`naming_brokers`); the password is never in it.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType, TopicMetadata

from keel.durability import ClusterDurability
from keel.errors import ConfigError, KafkaEdgeError
from keel.settings import KeelSettings, get_settings

DEFAULT_SCRAM = "SCRAM-SHA-512"

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    # Java's partitioner (also aiokafka's and Faust's): a key lands on the same partition
    # whichever client wrote it, so stream tables and query routing agree with producers.
    "partitioner": "murmur2_random",
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
}


# -- security, for both client stacks ----------------------------------------------------
@dataclass(frozen=True)
class Security:
    """The security settings of a client, checked: what both stacks are rendered from."""

    protocol: str
    mechanism: str | None
    username: str | None
    password: str | None = field(repr=False)
    ca_location: str | None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")


def client_security(settings: KeelSettings) -> Security:
    """The settings' security, or a ConfigError naming the KEEL_* variable that is wrong."""
    protocol = settings.security_protocol
    sasl = protocol.startswith("SASL_")
    password = None
    if settings.sasl_password is not None:
        password = settings.sasl_password.get_secret_value()
    elif settings.sasl_password_file is not None:
        try:
            password = settings.sasl_password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"KEEL_SASL_PASSWORD_FILE: cannot read {settings.sasl_password_file}: "
                f"{exc.strerror or exc}"
            ) from None
    if sasl and not settings.sasl_username:
        raise ConfigError(f"KEEL_SASL_USERNAME is needed with KEEL_SECURITY_PROTOCOL={protocol}")
    if sasl and not password:
        raise ConfigError(
            f"KEEL_SASL_PASSWORD or KEEL_SASL_PASSWORD_FILE is needed with "
            f"KEEL_SECURITY_PROTOCOL={protocol}"
        )
    ca = settings.ssl_ca_location
    if ca is not None and protocol.endswith("SSL") and not ca.is_file():
        raise ConfigError(f"KEEL_SSL_CA_LOCATION: no such file {ca}")
    return Security(
        protocol=protocol,
        mechanism=(settings.sasl_mechanism or DEFAULT_SCRAM) if sasl else None,
        username=settings.sasl_username if sasl else None,
        password=password if sasl else None,
        ca_location=str(ca) if ca is not None and protocol.endswith("SSL") else None,
    )


def security_config(settings: KeelSettings) -> dict[str, Any]:
    """The librdkafka (confluent-kafka) security properties of the settings."""
    sec = client_security(settings)
    config: dict[str, Any] = {"security.protocol": sec.protocol}
    if sec.sasl:
        config["sasl.mechanism"] = sec.mechanism
        config["sasl.username"] = sec.username
        config["sasl.password"] = sec.password
    if sec.ca_location:
        config["ssl.ca.location"] = sec.ca_location
    return config


def ssl_context(settings: KeelSettings) -> ssl.SSLContext | None:
    """The TLS context aiokafka takes (None without TLS): the brokers' certificate checked
    against KEEL_SSL_CA_LOCATION (or the system's store), host names verified."""
    sec = client_security(settings)
    if not sec.tls:
        return None
    return ssl.create_default_context(cafile=sec.ca_location)


def aiokafka_security(settings: KeelSettings) -> dict[str, Any]:
    """Keyword arguments of aiokafka's clients for the settings' security."""
    sec = client_security(settings)
    kwargs: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.tls:
        kwargs["ssl_context"] = ssl_context(settings)
    if sec.sasl:
        kwargs.update(
            sasl_mechanism=sec.mechanism,
            sasl_plain_username=sec.username,
            sasl_plain_password=sec.password,
        )
    return kwargs


def faust_credentials(settings: KeelSettings) -> Any:
    """Faust's `broker_credentials` for the settings (None for PLAINTEXT)."""
    import faust  # only the stream workers need it; the CLI starts faster without

    sec = client_security(settings)
    if sec.sasl:
        return faust.SASLCredentials(
            username=sec.username,
            password=sec.password,
            ssl_context=ssl_context(settings),
            mechanism=sec.mechanism,
        )
    if sec.tls:
        return faust.SSLCredentials(ssl_context(settings))
    return None


# -- why a connection failed ------------------------------------------------------------------
_causes: dict[tuple[object, ...], str] = {}  # a client's identity -> its last security cause
_causes_lock = threading.Lock()
_AUTHZ_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}


def security_cause(error: KafkaError, settings: KeelSettings) -> str | None:
    """One line naming a security reason for a librdkafka error, or None."""
    text = error.str()
    code = error.code()
    if code == KafkaError._AUTHENTICATION or "SASL authentication" in text:
        return (
            f"authentication failed for principal {settings.sasl_username!r} "
            f"({settings.sasl_mechanism or DEFAULT_SCRAM}): wrong password or unknown user "
            "(KEEL_SASL_USERNAME, KEEL_SASL_PASSWORD / KEEL_SASL_PASSWORD_FILE)"
        )
    if "certificate verify failed" in text or code == KafkaError._SSL:
        trusted = settings.ssl_ca_location or "the system's trust store"
        return (
            f"TLS handshake failed: the brokers' certificate is not trusted by {trusted} "
            f"(KEEL_SSL_CA_LOCATION): {_ssl_reason(text)}"
        )
    if "incorrect security.protocol" in text:
        return (
            f"the brokers refused KEEL_SECURITY_PROTOCOL={settings.security_protocol}: "
            "they expect another protocol (e.g. SASL_SSL)"
        )
    if code in _AUTHZ_CODES:
        return f"principal {settings.sasl_username!r} is not authorized: {text}"
    return None


def _ssl_reason(text: str) -> str:
    for marker in ("certificate verify failed", "SSL handshake failed"):
        if marker in text:
            # librdkafka's own advice after the colon speaks of its settings, not Keel's
            return text[text.index(marker) :].split(":", maxsplit=1)[0]
    return text


def record_errors(settings: KeelSettings, overrides: dict[str, Any] | None = None) -> Any:
    """An `error_cb` for librdkafka that remembers the last security cause per cluster, so
    that a command's timeout says why (`naming_brokers`). With an error callback librdkafka
    no longer logs its errors itself, so this one logs them (one line, the cause first when it
    is security), unless the client is silenced (`logger=SILENT_LOG`)."""
    identity = _identity(settings)
    silent = (overrides or {}).get("logger") is SILENT_LOG

    def on_error(error: KafkaError) -> None:
        cause = security_cause(error, settings)
        if cause is not None:
            with _causes_lock:
                _causes[identity] = cause
        if not silent:
            _log.warning("kafka error: %s", cause or error.str())

    return on_error


# Admin clients are not polled by their users, so their error callbacks wait in a queue:
# on a failure, `naming_brokers` serves them to learn the cause.
_admins: weakref.WeakSet[AdminClient] = weakref.WeakSet()


def last_security_cause(settings: KeelSettings) -> str | None:
    for admin in list(_admins):
        admin.poll(0)
    with _causes_lock:
        return _causes.get(_identity(settings))


def _identity(settings: KeelSettings) -> tuple[object, ...]:
    return (
        settings.bootstrap_servers, settings.security_protocol, settings.sasl_username,
        settings.ssl_ca_location,
    )  # fmt: skip


def make_producer(settings: KeelSettings | None = None, **overrides: Any) -> Producer:
    settings = settings or get_settings()
    config = {**PRODUCER_DEFAULTS, "error_cb": record_errors(settings, overrides), **overrides}
    return Producer(settings.kafka_config(**config))


def make_consumer(
    group_id: str, settings: KeelSettings | None = None, **overrides: Any
) -> Consumer:
    settings = settings or get_settings()
    config = {
        **CONSUMER_DEFAULTS, "group.id": group_id, "error_cb": record_errors(settings, overrides),
        **overrides,
    }  # fmt: skip
    return Consumer(settings.kafka_config(**config))


# For one-shot commands: librdkafka logs every failed connection attempt (every 50 ms) to
# stderr, which buries the one line the command ends with. Pass as `logger=SILENT_LOG`.
_log = logging.getLogger(__name__)
SILENT_LOG = logging.getLogger("keel.librdkafka.silent")
SILENT_LOG.addHandler(logging.NullHandler())
SILENT_LOG.propagate = False


@contextmanager
def kafka_call(context: str, timeout: float) -> Iterator[None]:
    """A librdkafka error, or a broker that does not answer in time, becomes one
    KafkaEdgeError saying what was being done."""
    try:
        yield
    except KafkaException as exc:
        raise KafkaEdgeError.from_kafka_error(exc.args[0], context) from exc
    except FutureTimeout:
        raise KafkaEdgeError(
            f"{context}: no answer from the brokers within {timeout:g}s", retriable=True
        ) from None


@contextmanager
def naming_brokers(settings: KeelSettings) -> Iterator[None]:
    """Prefix a KafkaEdgeError with the bootstrap servers, so a command's one-line error says
    which cluster it could not reach, and why when the reason is security (a wrong password
    or CA seen by the clients' error callback; the principal of an authorization failure)."""
    try:
        yield
    except KafkaEdgeError as exc:
        message = str(exc)
        if exc.code in _AUTHZ_CODES:
            message = f"principal {settings.sasl_username!r} is not authorized: {message}"
        elif (cause := last_security_cause(settings)) is not None:
            message = cause
        raise KafkaEdgeError(
            f"Kafka at {settings.bootstrap_servers}: {message}",
            code=exc.code, retriable=exc.retriable,
        ) from None  # fmt: skip


def has_record(msg: Message, context: str = "consuming") -> bool:
    """Whether a consumed message holds a record. A partition's end is skipped quietly,
    another error is logged and skipped, unless librdkafka calls it fatal: then it raises
    KafkaEdgeError naming `context`."""
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        _log.warning("consumer error: %s", error.str())
        if error.fatal():
            raise KafkaEdgeError.from_kafka_error(error, context)
    return False


def make_admin(settings: KeelSettings | None = None, **overrides: Any) -> AdminClient:
    settings = settings or get_settings()
    error_cb = record_errors(settings, overrides)
    admin = AdminClient(settings.kafka_config(**{"error_cb": error_cb, **overrides}))
    _admins.add(admin)
    return admin


@dataclass(frozen=True)
class TopicSpec:
    """A topic as code: name, partitions, replication and per-topic configs."""

    name: str
    partitions: int = 1
    # -1: Keel's choice, made by `for_cluster` (KEEL_REPLICATION_FACTOR, else the brokers'
    # default.replication.factor). A component never names a number of its own.
    replication_factor: int = -1
    config: dict[str, str] = field(default_factory=dict)

    def for_cluster(self, settings: KeelSettings) -> TopicSpec:
        """The topic as Keel creates it: what the spec leaves open, the operator's settings
        fill in; what they leave open too stays for the brokers' defaults (replication -1 is
        the brokers' default.replication.factor, KIP-464; a topic without min.insync.replicas
        follows the brokers' value)."""
        replication = self.replication_factor
        if replication < 0 and settings.replication_factor is not None:
            replication = settings.replication_factor
        config = dict(self.config)
        if settings.min_insync_replicas is not None:
            config.setdefault("min.insync.replicas", str(settings.min_insync_replicas))
        return TopicSpec(self.name, self.partitions, replication, config)

    def to_new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=dict(self.config),
        )


def ensure_topics(
    admin: AdminClient,
    specs: Iterable[TopicSpec],
    timeout: float = 30.0,
    settings: KeelSettings | None = None,
) -> list[str]:
    """Create the topics that do not exist yet, replicated as `TopicSpec.for_cluster` says;
    return the names created.

    An existing topic is left as it is (it may hold data); any other error is raised.
    """
    settings = settings or get_settings()
    specs = [spec.for_cluster(settings) for spec in specs]
    if not specs:
        return []
    futures = admin.create_topics([s.to_new_topic() for s in specs], request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            with kafka_call(f"creating topic {name}", timeout):
                future.result(timeout=timeout)
            created.append(name)
        except KafkaEdgeError as exc:
            if exc.code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def cluster_durability(admin: AdminClient, timeout: float = 15.0) -> ClusterDurability:
    """What the brokers give a new topic, read from the brokers themselves (DescribeConfigs of
    each broker: every one must answer, and the most cautious answer wins)."""
    with kafka_call("describing the cluster", timeout):
        nodes = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout).nodes
    configs = []
    for node in nodes:  # librdkafka takes one broker per DescribeConfigs call
        resource = ConfigResource(ResourceType.BROKER, str(node.id))
        with kafka_call(f"reading the configs of broker {node.id}", timeout):
            [future] = admin.describe_configs([resource], request_timeout=timeout).values()
            entries = future.result(timeout=timeout)
        configs.append({key: entry.value for key, entry in entries.items()})
    if not configs:
        raise KafkaEdgeError("describing the cluster: the brokers list no broker")

    def number(key: str) -> int:
        return min(int(c.get(key) or 1) for c in configs)

    def any_true(key: str) -> bool:
        return any(str(c.get(key)).lower() == "true" for c in configs)

    return ClusterDurability(
        brokers=len(nodes),
        default_replication=number("default.replication.factor"),
        min_insync_replicas=number("min.insync.replicas"),
        unclean_leader_election=any_true("unclean.leader.election.enable"),
        auto_create_topics=any_true("auto.create.topics.enable"),
    )


def topic_replication(admin: AdminClient, settings: KeelSettings, timeout: float = 15.0) -> int:
    """The replication factor a topic Keel creates gets, as a number: for a client that cannot
    leave it to the brokers (Faust's settings take no -1)."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    try:
        return cluster_durability(admin, timeout).default_replication
    except KafkaEdgeError as exc:  # e.g. a managed cluster that denies DescribeConfigs
        raise KafkaEdgeError(
            f"{exc} (the cluster's default.replication.factor is needed; "
            "or set KEEL_REPLICATION_FACTOR)",
            code=exc.code,
            retriable=exc.retriable,
        ) from None


def wait_for_topics(
    admin: AdminClient, names: Iterable[str], timeout: float = 30.0
) -> dict[str, TopicMetadata]:
    """Block until every named topic has a leader for each partition (metadata settled);
    return their metadata as seen then (asking again may reach a broker that lags behind)."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        with kafka_call("listing topics", timeout):
            metadata = admin.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        ready = {
            name
            for name, topic in metadata.topics.items()
            if topic.error is None
            and topic.partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        }
        if wanted <= ready:
            return {name: metadata.topics[name] for name in wanted}
        if time.monotonic() > deadline:
            raise KafkaEdgeError(f"topics not ready after {timeout}s: {sorted(wanted - ready)}")
        time.sleep(0.1)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    for name, future in admin.delete_topics(names, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaEdgeError.from_kafka_error(err, f"deleting topic {name}") from exc
