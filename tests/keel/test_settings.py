from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.settings import KeelSettings


def test_reads_keel_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEEL_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("KEEL_HOME", str(tmp_path))
    monkeypatch.setenv("KEEL_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KEEL_SASL_USERNAME", "svc")
    monkeypatch.setenv("KEEL_SECURITY_PROTOCOL", "SASL_SSL")
    settings = KeelSettings()
    assert settings.home == tmp_path
    assert "s3cret" not in repr(settings)  # secrets never show in logs or tracebacks
    config = settings.kafka_config(**{"linger.ms": 1})
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["sasl.password"] == "s3cret"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["linger.ms"] == 1


def test_rejects_an_invalid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    with pytest.raises(ValidationError, match="security_protocol"):
        KeelSettings()


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        KeelSettings().bootstrap_servers = "elsewhere:9092"  # type: ignore[misc]
