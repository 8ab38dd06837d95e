"""Run the registry: load state from its topic, then serve the REST API."""

from __future__ import annotations

import logging

from aiohttp import web

from keel.schemas.registry.app import create_app
from keel.schemas.registry.auth import RegistryUsers
from keel.schemas.registry.store import KafkaStore
from keel.settings import KeelSettings

log = logging.getLogger(__name__)


def serve(settings: KeelSettings, host: str, port: int) -> None:
    # A users file that cannot be read ends the command before the store is loaded.
    users = RegistryUsers(settings.registry_users_file) if settings.registry_users_file else None
    store = KafkaStore(settings, settings.registry_topic)
    store.start()
    app = create_app(store, users)

    async def on_cleanup(_app: web.Application) -> None:
        store.stop()

    app.on_cleanup.append(on_cleanup)
    log.info(
        "schema registry serving on http://%s:%d (topic %s, %s)", host, port,
        settings.registry_topic, "basic auth" if users else "no authentication",
    )  # fmt: skip
    web.run_app(app, host=host, port=port, print=None, access_log=None)
