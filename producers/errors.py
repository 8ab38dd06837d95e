"""Errors of the ingestion layer, all under `keel.errors.KeelError`."""

from __future__ import annotations

from keel.apikeys import KeyRefused
from keel.errors import KafkaEdgeError, KeelError


class IngestError(KeelError):
    """Root of the producers package's errors."""


class Backpressure(IngestError):
    """The broker cannot take the event now (unreachable, queue full, ack too slow).

    Nothing was acknowledged; a retry after `retry_after` seconds (same `event_id`) is safe.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryFailed(KafkaEdgeError, IngestError):
    """The broker refused an event for good (or it timed out); carries the librdkafka code."""


# An API key problem: `status` is 401 (missing or unknown key) or 403 (not allowed); the
# keys are the core's (keel.apikeys), shared with the views API.
AuthError = KeyRefused
