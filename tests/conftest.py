"""The test harness: one real Kafka for the whole session, and topics owned by each test.

Where the broker comes from, in order: `KEEL_BOOTSTRAP_SERVERS` when set; a testcontainers
Kafka when a Docker engine answers; otherwise the local JVM broker that `keel broker up`
runs, on free ports and its own folder, dying with the test run if the run is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from keel.kafka import TopicSpec, delete_topics, ensure_topics, wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.ports import free_base_port
from keel.local.ports import free_port as _free_port
from keel.settings import KeelSettings, get_settings
from tests.harness import start_registry

# The fault suite's shared 3-broker cluster (tests/faults): one for the session, whichever
# modules use it (a fixture imported into each module would start one per module).
pytest_plugins = ["tests.faults.cluster"]

# One Kafka version everywhere: the local stack's (KEEL_KAFKA_VERSION's default), also in
# docker-compose.yml (tests/keel/test_compose.py holds them equal).
KAFKA_IMAGE = f"apache/kafka:{KeelSettings.model_fields['kafka_version'].default}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-iterations",
        type=int,
        default=2,
        help="Rounds of each fault test in tests/faults (`make faults` runs 20).",
    )
    parser.addoption(
        "--all-faults",
        action="store_true",
        help="Also the fault scenarios marked long_form (`make faults` runs them).",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that touches the broker is an integration test; every other one is a unit test.
    The README's test command keeps the suite in budget with a short form of the fault suite:
    scenarios marked long_form run only under `make faults`."""
    long_form = pytest.mark.skip(reason="a long-form fault scenario: `make faults` runs it")
    for item in items:
        if item.get_closest_marker("long_form") and not config.getoption("--all-faults"):
            item.add_marker(long_form)
        fixtures = getattr(item, "fixturenames", ())
        if {"kafka_bootstrap", "redis_url", "postgres_dsn"} & set(fixtures):
            item.add_marker(pytest.mark.integration)
        elif not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)


def _docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka 4 broker, exported as KEEL_BOOTSTRAP_SERVERS so that
    Keel's settings and any subprocess a test starts use it too."""
    given = os.environ.get("KEEL_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield from _exported(container.get_bootstrap_server())
        return
    settings = get_settings()
    runs = settings.home / "test-brokers"
    _remove_dead_runs(runs)
    cluster = LocalKafka(
        runs / str(os.getpid()),
        libs_home=settings.home,
        version=settings.kafka_version,
        base_port=free_base_port(),
        die_with_parent=True,  # a killed test run takes its broker with it
    )
    bootstrap = cluster.up(progress=lambda _m: None)
    try:
        yield from _exported(bootstrap)
    finally:
        cluster.down(progress=lambda _m: None)
        shutil.rmtree(cluster.root, ignore_errors=True)


def _remove_dead_runs(runs: Path) -> None:
    """Data left by test runs that were killed (their broker died with them)."""
    for run in runs.glob("*"):
        if run.name.isdigit() and not Path(f"/proc/{run.name}").exists():
            shutil.rmtree(run, ignore_errors=True)


def _exported(bootstrap: str) -> Iterator[str]:
    previous = os.environ.get("KEEL_BOOTSTRAP_SERVERS")
    os.environ["KEEL_BOOTSTRAP_SERVERS"] = bootstrap
    get_settings.cache_clear()
    try:
        yield bootstrap
    finally:
        if previous is None:
            os.environ.pop("KEEL_BOOTSTRAP_SERVERS", None)
        else:
            os.environ["KEEL_BOOTSTRAP_SERVERS"] = previous
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def schema_registry(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Keel's registry (`keel registry`) on a free port with its own storage topic, exported as
    KEEL_SCHEMA_REGISTRY_URL for Keel's clients and any subprocess a test starts."""
    port = free_base_port()
    run = tmp_path_factory.mktemp("registry")
    process, url = start_registry(run, port, unique("_schemas-test"))
    previous = os.environ.get("KEEL_SCHEMA_REGISTRY_URL")
    os.environ["KEEL_SCHEMA_REGISTRY_URL"] = url
    get_settings.cache_clear()
    try:
        yield url
    finally:
        process.stop()
        if previous is None:
            os.environ.pop("KEEL_SCHEMA_REGISTRY_URL", None)
        else:
            os.environ["KEEL_SCHEMA_REGISTRY_URL"] = previous
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def new_topic(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory: `new_topic("orders", partitions=3)` creates a topic only this test uses."""
    created: list[str] = []

    def create(prefix: str = "test", partitions: int = 1, **config: str) -> str:
        name = unique(f"test-{prefix}")
        ensure_topics(admin, [TopicSpec(name, partitions, -1, config)])
        wait_for_topics(admin, [name])
        created.append(name)
        return name

    yield create
    delete_topics(admin, created)


@pytest.fixture
def group_id() -> str:
    return unique("test-group")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session: `KEEL_REDIS_URL` when set, else a private redis-server
    (installed from Debian's package on first use) on a free port, stopped at the end or
    when the run is killed."""
    given = os.environ.get("KEEL_REDIS_URL")
    if given:
        yield given
        return
    from keel.local.services import RedisService
    from keel.settings import KeelSettings

    home = tmp_path_factory.mktemp("redis-home")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    # A killed test run takes its Redis with it, as it does its broker.
    service = RedisService(KeelSettings(home=home, redis_url=url), die_with_parent=True)
    service.start(progress=lambda _m: None)
    try:
        yield url
    finally:
        service.stop(progress=lambda _m: None)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the session: `KEEL_POSTGRES_DSN` when set, else a private server
    (Debian's package on first use) on a free port with its own data folder, removed after;
    it stops when the run is killed too."""
    given = os.environ.get("KEEL_POSTGRES_DSN")
    if given:
        yield given
        return
    from keel.local.services import PostgresService
    from keel.settings import KeelSettings

    home = tmp_path_factory.mktemp("postgres-home")
    dsn = f"postgresql://keel:keel@127.0.0.1:{_free_port()}/keel"
    service = PostgresService(
        KeelSettings(home=home, postgres_dsn=dsn),
        die_with_parent=True,  # a killed test run takes its PostgreSQL with it
    )
    service.start(progress=lambda _m: None)
    try:
        yield dsn
    finally:
        service.stop(progress=lambda _m: None)
        shutil.rmtree(service.data_dir, ignore_errors=True)
