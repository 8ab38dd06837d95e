"""Client security rendered once for both client stacks, on plain values (no broker)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from keel.errors import ConfigError
from keel.kafka import aiokafka_security, client_security, faust_credentials, security_config
from keel.local.security import LocalSecurity
from keel.settings import KeelSettings

SECRET = "s3cret-do-not-print"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    security = LocalSecurity(tmp_path_factory.mktemp("sec") / "security")
    security.ensure()
    return security.ca_file


def _secured(ca: Path, **over: object) -> KeelSettings:
    fields: dict[str, object] = {
        "bootstrap_servers": "127.0.0.1:1", "security_protocol": "SASL_SSL",
        "sasl_username": "keel-ingest", "sasl_password": SECRET, "ssl_ca_location": ca,
    }  # fmt: skip
    return KeelSettings(**{**fields, **over})  # type: ignore[arg-type]


def test_librdkafka_and_aiokafka_get_the_same_security(ca: Path) -> None:
    settings = _secured(ca)
    assert security_config(settings) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "keel-ingest",
        "sasl.password": SECRET,
        "ssl.ca.location": str(ca),
    }
    kwargs = aiokafka_security(settings)
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "keel-ingest",
        "sasl_plain_password": SECRET,
    }
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert credentials.ssl_context.check_hostname


def test_plaintext_has_no_security(ca: Path) -> None:
    settings = KeelSettings(bootstrap_servers="127.0.0.1:1", ssl_ca_location=ca)
    assert security_config(settings) == {"security.protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None
    assert settings.kafka_config()["security.protocol"] == "PLAINTEXT"


def test_password_from_a_file(ca: Path, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n")
    settings = _secured(ca, sasl_password=None, sasl_password_file=tmp_path / "pw")
    assert security_config(settings)["sasl.password"] == SECRET


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"sasl_username": None}, "KEEL_SASL_USERNAME is needed with KEEL_SECURITY_PROTOCOL=SASL_SSL"),
        ({"sasl_password": None}, "KEEL_SASL_PASSWORD or KEEL_SASL_PASSWORD_FILE is needed"),
        ({"sasl_password": None, "sasl_password_file": "/nonexistent/pw"},
         "KEEL_SASL_PASSWORD_FILE: cannot read /nonexistent/pw"),
        ({"ssl_ca_location": "/nonexistent/ca.pem"}, "KEEL_SSL_CA_LOCATION: no such file"),
    ],
)  # fmt: skip
def test_a_missing_piece_names_the_setting(ca: Path, over: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        security_config(_secured(ca, **over))


def test_the_password_is_in_no_repr(ca: Path) -> None:
    settings = _secured(ca)
    for text in (repr(settings), str(settings), repr(client_security(settings)),
                 repr(faust_credentials(settings)), settings.model_dump_json()):  # fmt: skip
        assert SECRET not in text


def test_local_secrets_are_private_and_made_once(tmp_path: Path) -> None:
    security = LocalSecurity(tmp_path / "security")
    security.ensure()
    first = security.ca_file.read_bytes(), security.broker_keystore.read_bytes()
    password = security.password("keel-ingest")
    security.ensure()
    assert (security.ca_file.read_bytes(), security.broker_keystore.read_bytes()) == first
    assert security.password("keel-ingest") == password
    for path in (security.ca_key_file, security.broker_keystore,
                 security.password_file("keel-ingest")):  # fmt: skip
        assert path.stat().st_mode & 0o077 == 0, path
    assert len(password) >= 24
