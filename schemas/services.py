"""The registry's place in the local stack (`keel up`), plugged in through the `keel.services`
entry point. It starts after the broker and before every service that encodes events."""

from __future__ import annotations

from keel.local.services import ProcessService, Progress, Service, python_module
from keel.settings import KeelSettings

ORDER = 30  # after Kafka, Redis and PostgreSQL; before ingestion, streams and jobs


class RegistryService(ProcessService):
    def prepare(self, progress: Progress) -> None:
        """On a secured stack, its users (each principal acls.toml gives a registry role)
        written into the users file the registry reads (KEEL_REGISTRY_USERS_FILE)."""
        from keel.local.secured import running_secured
        from keel.schemas.registry.auth import set_user

        found = running_secured(self.settings)
        if found is None:
            return
        stack = found[1]
        for name, role, password in stack.registry_users():
            set_user(stack.registry_users_file, name, role, password)  # type: ignore[arg-type]
        progress(f"registry users (basic auth) in {stack.registry_users_file}")


def stack_services(settings: KeelSettings) -> list[Service]:
    port = settings.registry_port
    argv = python_module("keel.cli", "registry", "--port", str(port))
    # The process gets the stack's own broker and topic, whatever its environment says.
    env = {
        "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "KEEL_REGISTRY_TOPIC": settings.registry_topic,
    }
    ops = f"http://127.0.0.1:{port}"
    return [
        RegistryService(
            "registry", argv, settings, port=port, health_url=f"{ops}/readyz", ops_url=ops,
            env=env, order=ORDER, principal="keel-registry",
        )
    ]  # fmt: skip
