"""Errors of the schemas package, all under `keel.errors.KeelError`."""

from __future__ import annotations

from typing import Any

from keel.errors import KeelError


class SchemaError(KeelError):
    """Root of schema, serde and registry errors."""


class UnknownEventType(SchemaError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class InvalidSchema(SchemaError):
    """An .avsc file or a submitted schema that is not valid Avro."""


class ValidationFailed(SchemaError):
    """An event does not match the envelope or its type's schema.

    `.errors` lists `{"field": "user_id", "error": "required"}` entries (dotted paths).
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        summary = "; ".join(f"{e['field']}: {e['error']}" for e in errors[:5])
        super().__init__(f"invalid event: {summary}")


class DecodeError(SchemaError):
    """Bytes that are not a decodable Confluent-framed Avro value."""


class RegistryError(SchemaError):
    """An error answer of a schema registry, with its HTTP status and Confluent error code."""

    def __init__(self, message: str, *, status: int, error_code: int) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    @property
    def retriable(self) -> bool:
        return self.status >= 500 or self.status == 0
