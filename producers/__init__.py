"""Ingestion: the HTTP events API (`keel ingest`) and the Python producer SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.producers.sdk import AsyncKeelProducer, DeliveryResult, KeelProducer

__all__ = ["AsyncKeelProducer", "DeliveryResult", "KeelProducer"]


def __getattr__(name: str) -> Any:  # import the SDK (and confluent-kafka) only when used
    if name in __all__:
        from keel.producers import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
