"""The one exception root of Keel, and the errors raised at the Kafka edge."""

from __future__ import annotations


class KeelError(Exception):
    """Root of every error Keel raises on purpose."""


class ConfigError(KeelError):
    """A setting is missing or invalid."""


class KafkaEdgeError(KeelError):
    """A librdkafka error, carrying its code and whether a retry may succeed."""

    def __init__(self, message: str, *, code: int | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable

    @classmethod
    def from_kafka_error(cls, err: object, context: str = "") -> KafkaEdgeError:
        """Wrap a `confluent_kafka.KafkaError` without importing it here."""
        code = getattr(err, "code", lambda: None)()
        retriable = bool(getattr(err, "retriable", lambda: False)())
        text = getattr(err, "str", lambda: str(err))()
        prefix = f"{context}: " if context else ""
        return cls(f"{prefix}{text}", code=code, retriable=retriable)


class LocalStackError(KeelError):
    """The local stack (broker, Redis, PostgreSQL, ...) could not be started or stopped.

    Its message is one line that names the cause, shown to the user as it is.
    """
