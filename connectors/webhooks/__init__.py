"""The webhook sink: Keel events read from Kafka, POSTed as signed JSON to subscribers' URLs.

A package split at the pure/I-O seam:
- `subscriptions`: the subscriptions file, validated (pure);
- `signing`: the `Keel-Signature` scheme, the body and the delivery id (pure);
- `policy`: which answers are retried, after how long, and when an event is given up (pure);
- `sink`: the `WebhookSink` on the consumer runtime (Kafka and HTTP), whose docstring
  states the guarantees (at least once, in order per subscriber and partition).
"""

from keel.connectors.webhooks.errors import (
    DeliveryRefused,
    SignatureError,
    SubscriptionError,
    WebhookError,
)
from keel.connectors.webhooks.policy import (
    REASON_EXHAUSTED,
    REASON_EXPIRED,
    REASON_PERMANENT,
    REASON_UNDECODABLE,
    Outcome,
    RetryPolicy,
    Verdict,
    classify_error,
    classify_status,
    parse_retry_after,
)
from keel.connectors.webhooks.signing import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    delivery_id,
    event_body,
    signature,
    signature_header,
    verify,
)
from keel.connectors.webhooks.sink import H_ATTEMPTS, H_EVENT_ID, H_SUBSCRIBER, WebhookSink
from keel.connectors.webhooks.subscriptions import (
    Subscription,
    load_subscriptions,
    parse_subscriptions,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "H_ATTEMPTS",
    "H_EVENT_ID",
    "H_SUBSCRIBER",
    "REASON_EXHAUSTED",
    "REASON_EXPIRED",
    "REASON_PERMANENT",
    "REASON_UNDECODABLE",
    "SIGNATURE_HEADER",
    "DeliveryRefused",
    "Outcome",
    "RetryPolicy",
    "SignatureError",
    "Subscription",
    "SubscriptionError",
    "Verdict",
    "WebhookError",
    "WebhookSink",
    "classify_error",
    "classify_status",
    "delivery_id",
    "event_body",
    "load_subscriptions",
    "parse_retry_after",
    "parse_subscriptions",
    "signature",
    "signature_header",
    "verify",
]
