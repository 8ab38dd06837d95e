"""`keel webhooks ...`: the webhook sink (Kafka events -> signed HTTP POSTs)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from keel.command_group import command_group
from keel.logging import configure_logging
from keel.settings import KeelSettings, get_settings

webhooks_app = command_group(
    "webhooks", "Webhook sink: events from Kafka POSTed, signed, to subscribers' URLs."
)


def subscriptions_path(settings: KeelSettings, given: Path | None = None) -> Path:
    return Path(given or settings.webhooks_subscriptions or settings.home / "webhooks.toml")


@webhooks_app.command("run")
def run(
    subscriptions: Annotated[
        Path | None,
        typer.Option(
            "--subscriptions",
            "-s",
            help="Subscriptions file, .toml or .json (KEEL_WEBHOOKS_SUBSCRIPTIONS).",
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Port of /healthz, /readyz, /metrics; 0: none (KEEL_WEBHOOKS_HTTP_PORT)."
        ),
    ] = None,
) -> None:
    """Deliver events to the subscribers until SIGTERM/Ctrl-C (finished deliveries are
    committed; the rest is re-sent at the next start)."""
    from keel.connectors.webhooks import WebhookSink, load_subscriptions

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    subs = load_subscriptions(subscriptions_path(settings, subscriptions))
    sink = WebhookSink(subs, settings, http_port=http_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, sink.stop)
        await sink.run()

    asyncio.run(main())


@webhooks_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Subscriptions file (.toml or .json).")],
) -> None:
    """Validate a subscriptions file; exit 1 naming the subscription and field at fault."""
    from keel.connectors.webhooks import load_subscriptions

    settings = get_settings()
    for sub in load_subscriptions(file):
        events = "all events" if sub.events == "*" else ", ".join(sub.events)
        dlq = sub.dead_letter_topic or settings.webhooks_dlq_prefix + sub.name
        typer.echo(f"{sub.name}: {sub.url} ({events}; dead letters to {dlq})")
    typer.echo(f"{file}: OK")


@webhooks_app.command("sign")
def sign(
    body: Annotated[str, typer.Argument(help="The exact request body (JSON text).")],
    secret: Annotated[str, typer.Option("--secret", help="The subscription's secret.")],
    timestamp: Annotated[
        int | None, typer.Option(help="Unix seconds to sign with (default: now).")
    ] = None,
) -> None:
    """Print the Keel-Signature header Keel would send with BODY: for testing a receiver."""
    from keel.connectors.webhooks import SIGNATURE_HEADER, signature_header

    typer.echo(f"{SIGNATURE_HEADER}: {signature_header(secret, body.encode(), timestamp)}")
