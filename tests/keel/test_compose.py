"""docker-compose.yml is checked by a real compose implementation (Debian's docker-compose,
which validates offline), so an invalid file fails CI even without a Docker engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from keel.local.system import ensure_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_is_valid() -> None:
    compose = ensure_command("docker-compose", "docker-compose")
    result = subprocess.run(
        [compose, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_compose_uses_the_same_keel_settings() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert doc["services"]["kafka"]["image"].startswith("apache/kafka:")
    env = doc["x-keel-env"]
    assert {"KEEL_BOOTSTRAP_SERVERS", "KEEL_SCHEMA_REGISTRY_URL", "KEEL_REDIS_URL"} <= set(env)
    from keel.settings import KeelSettings

    known = {f"KEEL_{name.upper()}" for name in KeelSettings.model_fields}
    for service in doc["services"].values():
        for key in service.get("environment", {}) or {}:
            if key.startswith("KEEL_"):
                assert key in known, f"{key} is not a Keel setting"


def test_compose_runs_the_connectors_as_the_local_stack_does(tmp_path: Path) -> None:
    from keel.connectors.services import services
    from keel.settings import KeelSettings

    doc = yaml.safe_load(COMPOSE.read_text())
    # With a subscriptions file, so the webhook sink is among them (see the next test).
    (tmp_path / "webhooks.toml").write_text("")
    defaults = KeelSettings(home=tmp_path)
    for stacked in services(defaults):
        service = doc["services"][stacked.name]
        # The same command as `keel up` runs (python -m keel.connectors <command> ...)
        argv = stacked.argv  # type: ignore[attr-defined]
        command = argv[argv.index("keel.connectors") + 1 : argv.index("--http-port")]
        if "--subscriptions" in command:  # a host path here, the container's path there
            at = command.index("--subscriptions") + 1
            command[at] = service["command"][at]
        assert service["command"] == command
        # and the health check calls the port the connector serves by default.
        assert f":{stacked.port}/healthz" in " ".join(service["healthcheck"]["test"])


def test_the_webhook_sink_joins_the_stack_only_with_subscriptions(tmp_path: Path) -> None:
    from keel.connectors.services import services
    from keel.settings import KeelSettings

    def names(settings: KeelSettings) -> set[str]:
        return {s.name for s in services(settings)}

    without = names(KeelSettings(home=tmp_path))
    assert {"outbox-relay", "pgsink", "archive-sink"} <= without
    assert "webhook-sink" not in without
    (tmp_path / "webhooks.toml").write_text("")
    assert "webhook-sink" in names(KeelSettings(home=tmp_path))
    elsewhere = tmp_path / "hooks.json"
    elsewhere.write_text("[]")
    other_home = tmp_path / "other"
    assert "webhook-sink" not in names(KeelSettings(home=other_home))
    given = KeelSettings(home=other_home, webhooks_subscriptions=elsewhere)
    assert "webhook-sink" in names(given)
    # In compose it waits for its profile: a plain `docker compose up` needs no file.
    doc = yaml.safe_load(COMPOSE.read_text())
    assert doc["services"]["webhook-sink"]["profiles"] == ["webhooks"]


def test_compose_runs_the_kafka_version_the_local_stack_runs() -> None:
    """One Kafka version everywhere: KEEL_KAFKA_VERSION's default names it (the local stack
    fetches those jars; tests' testcontainers image follows it); the Kubernetes manifests run
    no broker (Kafka is the user's)."""
    from keel.settings import KeelSettings
    from tests.conftest import KAFKA_IMAGE

    version = KeelSettings.model_fields["kafka_version"].default
    image = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["image"]
    assert image == KAFKA_IMAGE == f"apache/kafka:{version}"
