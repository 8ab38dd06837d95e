"""A secured 3-broker cluster (`keel broker up --secure`): SASL_SSL with SCRAM-SHA-512, TLS
from the local CA, the standard authorizer denying what no ACL allows. Principals and ACLs
as code (`keel acls plan/apply`), least privilege proven by refusals, one-line failures that
name the cause and never the password, both client stacks connecting."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import KafkaError, KafkaException
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from keel.acls import Acl, load_acls, observe
from keel.errors import KafkaEdgeError
from keel.kafka import (
    SILENT_LOG,
    TopicSpec,
    ensure_topics,
    faust_credentials,
    kafka_call,
    make_admin,
    make_consumer,
    make_producer,
    naming_brokers,
    wait_for_topics,
)
from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port, free_port
from keel.local.security import ADMIN, LocalSecurity
from keel.producers.auth import create_key
from keel.schemas.errors import RegistryError
from keel.schemas.registry.auth import set_user
from keel.schemas.registry.client import RegistryClient
from keel.settings import KeelSettings, get_settings
from tests.harness import start_registry
from tests.polling import wait_for
from tests.processes import KeelProcess, run_keel
from tests.producers.conftest import post
from tests.producers.test_http_roundtrip import order

pytestmark = pytest.mark.integration
SHIPPED_ACLS = Path(__file__).resolve().parents[2] / "acls.toml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    root = tmp_path_factory.mktemp("secure")
    kafka = LocalKafka(
        root / "broker",
        libs_home=get_settings().home,  # the jars' cache
        version=get_settings().kafka_version,
        brokers=3,
        base_port=free_base_port(3),
        die_with_parent=True,
        secure=True,
        security=LocalSecurity(root / "security"),
        principals=tuple(load_acls(SHIPPED_ACLS).names()),
    )
    kafka.up(progress=lambda _m: None, timeout=600)
    try:
        yield kafka
    finally:
        kafka.down(progress=lambda _m: None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings_as(cluster: LocalKafka, principal: str, **over: Any) -> KeelSettings:
    return KeelSettings(**{**cluster.client_settings(principal), **over})


def env_as(cluster: LocalKafka, principal: str, **over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env["KEEL_HOME"] = str(cluster.root / "home")
    for name, value in cluster.client_settings(principal).items():
        env[f"KEEL_{name.upper()}"] = str(value)
    return {**env, **over}


def new_principal(cluster: LocalKafka, prefix: str) -> str:
    name = unique(prefix)
    cluster.set_password(name, uuid.uuid4().hex)
    return name


def produce(settings: KeelSettings, topic: str) -> KafkaError | None:
    """One record to `topic`; the delivery error, or None when the brokers acked it."""
    fatal: list[KafkaError] = []  # a principal that may write nothing cannot even get an
    # idempotent producer id: librdkafka reports that as a fatal error, not per record
    producer = make_producer(
        settings, logger=SILENT_LOG, error_cb=lambda e: fatal.append(e) if e.fatal() else None,
        **{"message.timeout.ms": 20000},
    )  # fmt: skip
    result: list[KafkaError | None] = []
    producer.produce(topic, b"v", key=b"k", on_delivery=lambda err, _m: result.append(err))
    try:
        producer.flush(30)
    except (KafkaException, SystemError) as exc:  # the fatal error, raised from flush
        inner = exc if isinstance(exc, KafkaException) else exc.__cause__ or exc.__context__
        if isinstance(inner, KafkaException):
            return cast(KafkaError, inner.args[0])
        if not fatal:
            raise
    if fatal:
        return fatal[0]
    assert result, "no delivery report"
    return result[0]


def consume_one(settings: KeelSettings, topic: str, group: str) -> bytes | KafkaError:
    consumer = make_consumer(group, settings, logger=SILENT_LOG)
    consumer.subscribe([topic])
    try:

        def poll() -> bytes | KafkaError | None:
            msg = consumer.poll(0.5)
            if msg is None:
                return None
            error = msg.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                return error
            return msg.value() if error is None else None

        found: bytes | KafkaError = wait_for(poll, 90, f"a record or an error from {topic}")
        return found
    finally:
        consumer.close()


def write_acls(path: Path, *principals: tuple[str, dict[str, list[str]]]) -> Path:
    lines = []
    for name, grants in principals:
        lines.append(f'[[principals]]\nname = "{name}"')
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in grants.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_cluster_is_secured_and_denies_by_default(cluster: LocalKafka) -> None:
    admin = make_admin(settings_as(cluster, ADMIN), logger=SILENT_LOG)
    metadata = admin.list_topics(timeout=30)
    assert len(metadata.brokers) == 3
    topic = unique("sec-default")
    ensure_topics(admin, [TopicSpec(topic, 3, 3)])
    wait_for_topics(admin, [topic])
    assert all(
        len(p.replicas) == 3 for p in admin.list_topics(topic).topics[topic].partitions.values()
    )

    plaintext = KeelSettings(bootstrap_servers=cluster.bootstrap())
    with (
        pytest.raises(KafkaEdgeError),
        naming_brokers(plaintext),
        kafka_call("listing topics", 10),
    ):
        make_admin(plaintext, logger=SILENT_LOG).list_topics(timeout=10)

    nobody = new_principal(cluster, "nobody")  # authenticated, but granted nothing
    error = produce(settings_as(cluster, nobody), topic)
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_acls_as_code_and_least_privilege(cluster: LocalKafka, tmp_path: Path) -> None:
    mine, other, created = unique("sec-mine"), unique("sec-other"), unique("sec-created")
    group = unique("sec-group")
    admin = make_admin(settings_as(cluster, ADMIN), logger=SILENT_LOG)
    ensure_topics(admin, [TopicSpec(mine, 3), TopicSpec(other, 3)])
    wait_for_topics(admin, [mine, other])
    writer, reader = new_principal(cluster, "writer"), new_principal(cluster, "reader")
    acls = write_acls(
        tmp_path / "acls.toml",
        (writer, {"write": [mine]}),
        (reader, {"read": [mine, other], "groups": [group]}),
    )
    as_admin = env_as(cluster, ADMIN)

    planned = run_keel("acls", "plan", "-f", str(acls), env=as_admin, timeout=120)
    assert planned.returncode == 3, planned.stderr
    assert f"  + User:{writer} WRITE topic {mine}" in planned.stdout.splitlines()
    assert f"  + User:{reader} READ group {group}" in planned.stdout.splitlines()
    applied = run_keel("acls", "apply", "-f", str(acls), "--yes", env=as_admin, timeout=120)
    assert applied.returncode == 0, applied.stderr
    assert "applied: 4 added, 0 removed" in applied.stdout
    again = run_keel("acls", "plan", "-f", str(acls), env=as_admin, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr

    # What the file grants works, and nothing else does.
    as_writer, as_reader = settings_as(cluster, writer), settings_as(cluster, reader)
    assert produce(as_writer, mine) is None
    refused = produce(as_writer, other)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    not_a_writer = produce(as_reader, mine)  # a reader may not write
    assert not_a_writer is not None
    assert not_a_writer.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    )  # fmt: skip
    assert consume_one(as_reader, mine, group) == b"v"
    wrong_group = consume_one(as_reader, mine, unique("sec-not-granted"))
    assert isinstance(wrong_group, KafkaError)
    assert wrong_group.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # one line naming the principal and the topic
    with pytest.raises(KafkaEdgeError) as denied, naming_brokers(as_writer):
        ensure_topics(make_admin(as_writer, logger=SILENT_LOG), [TopicSpec(created, 1)])
    assert f"principal '{writer}' is not authorized" in str(denied.value)
    assert f"creating topic {created}" in str(denied.value)

    # Taking a grant out of the file removes it, and only it: a principal the file does not
    # name keeps its ACLs.
    bystander = Acl(unique("bystander"), "topic", other, False, "READ")
    for future in admin.create_acls([bystander.to_binding()]).values():
        future.result(30)
    write_acls(acls, (writer, {"write": [mine]}), (reader, {"read": [mine], "groups": [group]}))
    drift = run_keel("acls", "plan", "-f", str(acls), env=as_admin, timeout=120)
    assert drift.returncode == 3
    lines = [ln for ln in drift.stdout.splitlines() if ln.startswith("  ")]
    assert lines == [f"  - User:{reader} READ topic {other}"]
    assert "unmanaged principal(s) left alone" in drift.stdout
    run_keel("acls", "apply", "-f", str(acls), "--yes", env=as_admin, timeout=120, check=True)
    assert bystander in observe(admin)
    error = consume_one(as_reader, other, group)
    assert isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_failures_are_one_line_naming_the_cause_never_the_password(
    cluster: LocalKafka, tmp_path: Path
) -> None:
    password = cluster.security.password("keel-ops")
    other_ca = LocalSecurity(tmp_path / "other")
    other_ca.ensure()
    nobody = new_principal(cluster, "nobody")
    topic = unique("sec-dlq")
    admin = make_admin(settings_as(cluster, ADMIN), logger=SILENT_LOG)
    ensure_topics(admin, [TopicSpec(topic, 1)])
    wait_for_topics(admin, [topic])
    acls = str(write_acls(tmp_path / "acls.toml", ("x", {"read": ["y"]})))
    plan = ("acls", "plan", "-f", acls, "--timeout", "15")
    cases = {
        "wrong password": (
            plan, env_as(cluster, "keel-ops", KEEL_SASL_PASSWORD="not-" + password[:6]),
            "authentication failed for principal 'keel-ops' (SCRAM-SHA-512)",
        ),
        "unknown CA": (
            plan, env_as(cluster, "keel-ops", KEEL_SSL_CA_LOCATION=str(other_ca.ca_file)),
            f"the brokers' certificate is not trusted by {other_ca.ca_file}",
        ),
        "missing cluster ACL": (
            plan, env_as(cluster, nobody),
            f"principal '{nobody}' is not authorized: describing ACLs",
        ),
        "missing topic ACL": (
            ("dlq", "list", topic), env_as(cluster, nobody),
            f"principal '{nobody}' is not authorized: reading dead-letter topic {topic}",
        ),
    }  # fmt: skip
    for case, (args, env, expected) in cases.items():
        result = run_keel(*args, env=env, timeout=120)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (case, result.stderr)
        assert password not in result.stdout + result.stderr
        assert cluster.security.password(nobody) not in result.stdout + result.stderr

    # A stream worker (a service, logging as it goes) ends on the same one line.
    wrong = "not-" + cluster.security.password("keel-streams")[:6]
    worker = run_keel(
        "streams", "worker", "--port", str(free_port()), timeout=120,
        env=env_as(cluster, "keel-streams", KEEL_SASL_PASSWORD=wrong,
                   KEEL_HOME=str(tmp_path / "home"), KEEL_REPLICATION_FACTOR="1"),
    )  # fmt: skip
    assert worker.returncode == 1, worker.stderr[-2000:]
    assert worker.stderr.strip().splitlines()[-1].startswith("keel: error: Kafka at 127.0.0.1:"), (
        worker.stderr[-2000:]
    )
    assert "authentication failed for principal 'keel-streams'" in worker.stderr.splitlines()[-1]
    assert wrong not in worker.stdout + worker.stderr


def test_a_rotated_password_takes_effect_at_once(cluster: LocalKafka) -> None:
    who = new_principal(cluster, "rotated")
    old = KeelSettings(
        **{**cluster.client_settings(who), "sasl_password_file": None},
        sasl_password=cluster.security.password(who),
    )
    with naming_brokers(old), kafka_call("listing topics", 20):
        make_admin(old, logger=SILENT_LOG).list_topics(timeout=20)
    cluster.set_password(who, uuid.uuid4().hex)
    with (
        pytest.raises(KafkaEdgeError, match=f"authentication failed for principal '{who}'"),
        naming_brokers(old),
        kafka_call("listing topics", 10),
    ):
        make_admin(old, logger=SILENT_LOG).list_topics(timeout=10)
    new = settings_as(cluster, who)  # reads the rewritten password file
    with naming_brokers(new), kafka_call("listing topics", 20):
        make_admin(new, logger=SILENT_LOG).list_topics(timeout=20)


def test_aiokafka_and_faust_credentials_connect(cluster: LocalKafka, tmp_path: Path) -> None:
    """Faust's workers take their credentials in aiokafka's shape: the same settings, through
    keel.kafka.faust_credentials and Faust's own translation, produce and consume."""
    topic, group = unique("sec-aio"), unique("sec-aio-group")
    admin = make_admin(settings_as(cluster, ADMIN), logger=SILENT_LOG)
    ensure_topics(admin, [TopicSpec(topic, 1)])
    wait_for_topics(admin, [topic])
    who = new_principal(cluster, "streams")
    acls = write_acls(
        tmp_path / "acls.toml", (who, {"read": [topic], "write": [topic], "groups": [group]})
    )
    run_keel(
        "acls",
        "apply",
        "-f",
        str(acls),
        "--yes",
        env=env_as(cluster, ADMIN),
        timeout=120,
        check=True,
    )
    auth = credentials_to_aiokafka_auth(faust_credentials(settings_as(cluster, who)))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"

    async def roundtrip() -> bytes:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap(), **auth)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"from-aiokafka", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=cluster.bootstrap(), group_id=group,
            auto_offset_reset="earliest", **auth,
        )  # fmt: skip
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 90)
            return bytes(record.value or b"")
        finally:
            await consumer.stop()

    assert asyncio.run(roundtrip()) == b"from-aiokafka"


def test_components_run_as_their_own_principals_and_leak_no_password(
    cluster: LocalKafka, tmp_path: Path
) -> None:
    """The registry and the events API, each as its principal of the shipped acls.toml: an
    event goes through, the registry asking for basic auth (readers read, writers register).
    A replica with a wrong password or without ACLs is not ready, its /readyz naming why in
    one line. No password is in their logs, /metrics or /readyz."""
    run_keel("acls", "apply", "--yes", "-f", str(SHIPPED_ACLS), env=env_as(cluster, ADMIN),
             timeout=120, check=True)  # fmt: skip
    admin = make_admin(settings_as(cluster, ADMIN), logger=SILENT_LOG)
    ensure_topics(admin, [TopicSpec("events", 3)])  # the ingest principal may not create it
    wait_for_topics(admin, ["events"])

    users = tmp_path / "registry-users.json"
    writer_pw, reader_pw = uuid.uuid4().hex, uuid.uuid4().hex
    set_user(users, "keel-ingest", "writer", writer_pw)
    set_user(users, "reader", "reader", reader_pw)
    registry, registry_url = start_registry(
        tmp_path / "registry", free_port(), "_schemas",
        **env_as(cluster, "keel-registry", KEEL_REGISTRY_USERS_FILE=str(users)),
    )  # fmt: skip
    keys = tmp_path / "keys.json"
    key = create_key(keys, "shop")
    nobody = new_principal(cluster, "nobody")  # authenticated, granted nothing

    def ingest_as(principal: str, name: str, **over: str) -> KeelProcess:
        port = free_port()
        over = {"KEEL_SCHEMA_REGISTRY_USER_INFO": f"keel-ingest:{writer_pw}", **over}
        env = env_as(
            cluster, principal, KEEL_SCHEMA_REGISTRY_URL=registry_url,
            KEEL_INGEST_KEYS_FILE=str(keys), **over,
        )  # fmt: skip
        return KeelProcess.start(
            [sys.executable, "-m", "keel.cli", "ingest", "--port", str(port), "--workers", "1"],
            env, tmp_path / f"{name}.log", port=port, name=name,
        )  # fmt: skip

    ingest = ingest_as("keel-ingest", "ingest")
    wrong = ingest_as(
        "keel-ingest", "wrong-password", KEEL_SASL_PASSWORD="not-the-password",
        KEEL_SCHEMA_REGISTRY_USER_INFO="keel-ingest:nope",
    )  # fmt: skip
    unauthorized = ingest_as(nobody, "no-acls")

    archive_group = unique("sec-archive")

    def archive_as(principal: str, name: str, **over: str) -> KeelProcess:
        port = free_port()
        env = env_as(
            cluster, principal, KEEL_SCHEMA_REGISTRY_URL=registry_url,
            KEEL_ARCHIVE_ROOT=str(tmp_path / name), KEEL_ARCHIVE_GROUP=archive_group, **over,
        )  # fmt: skip
        return KeelProcess.start(
            [sys.executable, "-m", "keel.cli", "archive", "run", "--http-port", str(port)],
            env, tmp_path / f"{name}.log", port=port, name=name,
        )  # fmt: skip

    sink = archive_as(nobody, "sink-no-acls")
    try:
        wait_for(ingest.ready, 120, "ingest /readyz")
        status, _, body = post(ingest.url, order(), key)
        assert status == 202, body
        assert body["topic"] == "events"

        def unready(process: KeelProcess, check: str) -> dict[str, Any] | None:
            status, text = process.get("/readyz")
            found = json.loads(text)["checks"].get(check, {}) if status == 503 else {}
            return found if "error" in found else None

        def named(process: KeelProcess, check: str, what: str) -> dict[str, Any]:
            try:
                found: dict[str, Any] = wait_for(lambda: unready(process, check), 60, what)
            except AssertionError as exc:  # what the process said, for the failure
                raise AssertionError(f"{exc}; /readyz {process.get('/readyz')}\n"
                                     f"{process.tail(12)}") from None  # fmt: skip
            return found

        refused = named(wrong, "broker", "the wrong password named")
        assert refused["error"].startswith(
            "authentication failed for principal 'keel-ingest' (SCRAM-SHA-512)"
        ), refused
        registry_refused = named(wrong, "registry", "the registry refusal named")
        assert "Unauthorized: wrong user or password for 'keel-ingest'" in registry_refused["error"]
        assert "KEEL_SCHEMA_REGISTRY_USER_INFO" in registry_refused["error"]
        denied = named(unauthorized, "broker", "the missing ACL named")
        assert denied["error"].startswith(f"principal '{nobody}' is not authorized"), denied
        assert "topic events" in denied["error"], denied
        # a sink whose principal may not join its group (nor read its topic): /readyz names
        # the principal and the first resource refused
        not_read = named(sink, "kafka", "the sink's missing ACL named")
        assert not_read["error"].startswith(f"principal '{nobody}' is not authorized"), not_read
        assert f"(group {archive_group})" in not_read["error"], not_read

        # The registry: nobody without credentials, readers read, only writers register.
        schema = {"type": "record", "name": "Sec", "fields": []}
        with pytest.raises(RegistryError, match="KEEL_SCHEMA_REGISTRY_USER_INFO") as anonymous:
            RegistryClient(registry_url, user_info="").subjects()
        assert anonymous.value.status == 401
        as_reader = RegistryClient(registry_url, user_info=f"reader:{reader_pw}")
        assert as_reader.subjects()  # what ingest registered at its start
        with pytest.raises(RegistryError, match="only writers may register") as forbidden:
            as_reader.register(unique("sec-subject"), schema)
        assert (forbidden.value.status, forbidden.value.error_code) == (403, 40301)
        as_writer = RegistryClient(registry_url, user_info=f"keel-ingest:{writer_pw}")
        assert as_writer.register(unique("sec-subject"), schema) > 0
        probes = [registry.text("/readyz"), registry.text("/metrics")]  # open to probes

        outputs = [
            *probes, registry.log.read_text(), registry.text("/metrics"),
            *(p.log.read_text() for p in (ingest, wrong, unauthorized, sink)),
            *(p.get(path)[1] for p in (ingest, wrong, unauthorized, sink)
              for path in ("/metrics", "/readyz")),  # a 503 of /readyz included
        ]  # fmt: skip
    finally:
        for process in (ingest, wrong, unauthorized, sink, registry):
            process.stop()
    secrets = [cluster.security.password(p) for p in ("keel-registry", "keel-ingest", ADMIN)]
    secrets += [writer_pw, reader_pw, cluster.security.password(nobody), "not-the-password"]
    for output in outputs:
        for secret in secrets:
            assert secret not in output
