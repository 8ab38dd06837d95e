"""The local cluster's secrets: a CA made once under KEEL_HOME, the brokers' certificate
signed by it, and one SCRAM password per principal, each in its own file (mode 0600).

Layout of `KEEL_HOME/security/`:
  ca.pem           the CA certificate: what clients trust (KEEL_SSL_CA_LOCATION)
  ca-key.pem       the CA's private key (only used here, to sign the brokers' certificate)
  broker.pem       the brokers' private key and certificate (a Kafka PEM keystore), valid
                   for localhost and 127.0.0.1, also the client certificate brokers show
                   the controllers
  users/NAME       the SCRAM-SHA-512 password of principal NAME (KEEL_SASL_PASSWORD_FILE)

Passwords never go on a command line or into a log; processes are given the file's path.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keel.errors import LocalStackError

ADMIN = "admin"  # the brokers' own SCRAM principal (inter-broker) and the super user
BROKER_DN = "CN=keel-broker"  # how a broker is known to the controllers (mutual TLS)
MECHANISM = "SCRAM-SHA-512"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_VALID_DAYS = 3650


@dataclass(frozen=True)
class LocalSecurity:
    """The secrets under `root` (KEEL_HOME/security); `ensure()` makes what is missing."""

    root: Path

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.root / "ca-key.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.root / "broker.pem"

    def password_file(self, principal: str) -> Path:
        if not _NAME.match(principal):
            raise LocalStackError(
                f"principal {principal!r}: use letters, digits, '.', '_' or '-' (at most 64)"
            )
        return self.root / "users" / principal

    def ensure(self) -> None:
        """The CA and the brokers' certificate, made once; later calls keep them."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if not (self.ca_file.exists() and self.ca_key_file.exists()):
            self._make_ca()
        if not self.broker_keystore.exists():
            self._make_broker_certificate()

    def password(self, principal: str) -> str:
        """The principal's password, made on first use."""
        path = self.password_file(principal)
        if not path.exists():
            self.set_password(principal, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def set_password(self, principal: str, password: str) -> None:
        path = self.password_file(principal)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, password.encode())

    # -- internals ------------------------------------------------------------------------
    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keel local CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key_file, _pkcs8(key))
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.broker_keystore.unlink(missing_ok=True)  # signed by the old CA, if any

    def _make_broker_certificate(self) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key_file.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise LocalStackError(
                f"{self.ca_key_file} is not the key Keel made; remove {self.root}"
            )
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keel-broker")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
            serialization.Encoding.PEM
        )
        _write_private(self.broker_keystore, _pkcs8(key) + chain)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Kafka's PEM keystore reads PKCS#8 keys only.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner alone, replacing the file at once."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(partial, path)
