"""Keel's settings: the one place that reads the environment (`KEEL_*`).

The same names are used by docker-compose, Kubernetes manifests and the local stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".keel"


class KeelSettings(BaseSettings):
    """Every setting Keel reads, with its default for the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="KEEL_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    # Kafka connection
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_id: str = "keel"

    # Schema registry (Keel's own by default; any Confluent-compatible one works)
    schema_registry_url: str = "http://127.0.0.1:8081"

    # Stores used by later components
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_dsn: SecretStr = SecretStr("postgresql://keel:keel@127.0.0.1:5432/keel")

    # Local stack
    home: Path = Field(DEFAULT_HOME, description="Where the local stack keeps jars, data, logs.")
    kafka_version: str = "4.4.0"
    broker_port: int = 9092
    broker_heap: str = "512m"
    maven_settings: Path | None = Field(
        None, description="A Maven settings.xml for fetching Kafka's jars (e.g. a company mirror)."
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration shared by every Keel client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        config.update(overrides)
        return config


@lru_cache(maxsize=1)
def get_settings() -> KeelSettings:
    """The process-wide settings, read once from the environment."""
    return KeelSettings()
