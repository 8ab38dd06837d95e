"""How a worker turns a message's bytes into a job record: Keel's Avro (Confluent wire
format, writer schema from the registry) through `keel.schemas.serde.AvroSerde`."""

from __future__ import annotations

from typing import Any, Protocol

from keel.consumers.errors import UndecodableJob


class JobDecoder(Protocol):
    def record_name(self, data: bytes) -> str | None:
        """The full record name of the writer schema (without decoding the payload)."""
        ...

    def decode(self, data: bytes) -> dict[str, Any]:
        """The record; raises UndecodableJob (`retriable` when the registry is down: the
        worker waits that out with `keel.runtime.decode_with_retry`)."""
        ...


class AvroJobDecoder:
    """Decodes with `AvroSerde`; the record name comes from the writer schema by id (cached
    by the registry client), so records of other types on a shared topic cost no decoding."""

    def __init__(self, serde: Any, registry: Any) -> None:
        self.serde = serde
        self.registry = registry
        self._names: dict[int, str | None] = {}

    def record_name(self, data: bytes) -> str | None:
        from keel.schemas.wire import unframe

        try:
            schema_id, _ = unframe(data)
        except Exception as exc:
            raise UndecodableJob(f"not Keel's wire format: {exc}") from exc
        if schema_id not in self._names:
            try:
                schema = self.registry.get_schema(schema_id)
            except Exception as exc:
                raise _undecodable(f"unknown schema id {schema_id}", exc) from exc
            self._names[schema_id] = _full_name(schema)
        return self._names[schema_id]

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            record: dict[str, Any] = self.serde.decode(data)
            return record
        except Exception as exc:
            raise _undecodable("cannot decode job", exc) from exc


def _undecodable(what: str, exc: Exception) -> UndecodableJob:
    """Permanent, unless the cause is an outage (a registry that does not answer)."""
    return UndecodableJob(f"{what}: {exc}", retriable=bool(getattr(exc, "retriable", False)))


def _full_name(schema: Any) -> str | None:
    if not isinstance(schema, dict):
        return None
    name = schema.get("name")
    if not isinstance(name, str):
        return None
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def avro_decoder(settings: Any) -> AvroJobDecoder:
    """The default decoder for these settings (the registry at KEEL_SCHEMA_REGISTRY_URL)."""
    from keel.schemas.registry.client import RegistryClient
    from keel.schemas.serde import AvroSerde

    registry = RegistryClient(settings.schema_registry_url)
    return AvroJobDecoder(AvroSerde(registry), registry)
