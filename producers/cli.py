"""`keel ingest`, `keel keys ...` and `keel demo`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.settings import get_settings

keys_app = command_group("keys", "API keys of the events API (stored hashed).")


def ingest(
    host: Annotated[str | None, typer.Option(help="Address to bind (KEEL_INGEST_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (KEEL_INGEST_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes; 0 = one per core (KEEL_INGEST_WORKERS).")
    ] = None,
) -> None:
    """Serve the HTTP events API (POST /v1/events) until SIGTERM/Ctrl-C."""
    from keel.logging import configure_logging
    from keel.producers.app import serve, worker_count

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    serve(
        host or settings.ingest_host,
        settings.ingest_port if port is None else port,
        worker_count(settings, workers),
    )


@keys_app.command("create")
def create(
    source: Annotated[str, typer.Argument(help="The source written into every event sent.")],
    types: Annotated[
        list[str] | None, typer.Option("--types", help="Event types it may send (default: all).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Events/s for this key (default KEEL_INGEST_RATE_LIMIT).")
    ] = None,
    scopes: Annotated[
        list[str] | None,
        typer.Option(
            "--scope", help="What it may do: events (send, the default), views (read views)."
        ),
    ] = None,
) -> None:
    """Create an API key and print it (it is stored hashed: this is the only time it shows)."""
    from keel.producers.auth import create_key, keys_file
    from keel.schemas.catalog import load_catalog

    wanted = [t for item in types or [] for t in item.split(",") if t]
    catalog = load_catalog()
    unknown = [t for t in wanted if t not in catalog]
    if unknown:
        typer.echo(
            f"keel: error: unknown event type(s) {', '.join(unknown)}; "
            f"known: {', '.join(catalog.types())}",
            err=True,
        )
        raise typer.Exit(1)
    wanted_scopes = [t for item in scopes or [] for t in item.split(",") if t]
    typer.echo(
        create_key(keys_file(get_settings()), source, wanted or None, rate, wanted_scopes or None)
    )


@keys_app.command("list")
def list_() -> None:
    """The keys on file (ids, sources, types; never the keys)."""
    from keel.producers.auth import keys_file, list_keys

    for entry in list_keys(keys_file(get_settings())):
        typer.echo(json.dumps(entry))


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keel keys list`).")],
) -> None:
    """Revoke an API key: every replica refuses it (401) within about a second."""
    from keel.producers.auth import keys_file, revoke_key

    entry = revoke_key(keys_file(get_settings()), key_id)
    typer.echo(f"revoked {entry['id']} (source {entry['source']})")


def demo(
    rate: Annotated[float, typer.Option(help="Events per second to send.")] = 20.0,
    duration: Annotated[float, typer.Option(help="Seconds to run; 0 runs until Ctrl-C.")] = 0.0,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 200,
    url: Annotated[str | None, typer.Option(help="Events API (KEEL_INGEST_URL).")] = None,
    key: Annotated[
        str | None, typer.Option(help="API key (KEEL_INGEST_API_KEY; default the dev key).")
    ] = None,
) -> None:
    """Simulate user sessions (sign-ups, views, carts, orders, reports) through the API."""
    import asyncio

    from keel.producers.demo import dev_key, run_demo

    settings = get_settings()
    api_key = key or (
        settings.ingest_api_key.get_secret_value() if settings.ingest_api_key else dev_key(settings)
    )
    stats = asyncio.run(
        run_demo(url or settings.ingest_url, api_key, rate=rate, duration=duration, users=users)
    )
    typer.echo(json.dumps(stats))
    if stats["sent"] and not stats["accepted"]:
        raise typer.Exit(1)
