"""The webhook sink's errors."""

from __future__ import annotations

from keel.errors import KeelError


class WebhookError(KeelError):
    """Root of the webhook sink's errors."""


class DeliveryRefused(WebhookError):
    """A subscriber did not take an event: its HTTP answer stands for this error class in a
    dead letter's `keel.error.class`."""


class SubscriptionError(WebhookError):
    """The subscriptions file is missing, unreadable or invalid."""


class SignatureError(WebhookError):
    """A `Keel-Signature` header does not verify."""
