"""`keel webhooks ...`: the webhook sink (Kafka events -> signed HTTP POSTs)."""

from __future__ import annotations

from keel.command_group import command_group

webhooks_app = command_group(
    "webhooks", "Webhook sink: events from Kafka POSTed, signed, to subscribers' URLs."
)
