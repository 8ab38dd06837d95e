"""Who may use the registry: HTTP basic auth in Confluent's convention.

Clients send `Authorization: Basic base64(USER:PASSWORD)` (Confluent's clients from their
`basic.auth.user.info`, Keel's from KEEL_SCHEMA_REGISTRY_USER_INFO). A `reader` may read
(subjects, versions, schemas, configs, compatibility checks, lookups); a `writer` may also
register, delete and change configs. The operational surface (/healthz, /readyz, /metrics)
stays open for probes and Prometheus, as it is on every Keel process.

Users live in a JSON file (KEEL_REGISTRY_USERS_FILE, mode 0600) holding each password's
scrypt hash, never the password; the registry reloads it when it changes, so a user added,
removed or given a new password takes effect on the next request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from keel.schemas.errors import SchemaError

Role = Literal["reader", "writer"]
ROLES: tuple[Role, ...] = ("reader", "writer")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_REGISTER = re.compile(r"^/subjects/[^/]+/versions/?$")


class UsersFileError(SchemaError):
    """The registry's users file cannot be read or does not follow its format."""


def _digest(password: str, salt: bytes) -> str:
    return hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT).hex()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"users": []}
    except (OSError, ValueError) as exc:
        raise UsersFileError(f"registry users file {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("users"), list):
        raise UsersFileError(f'registry users file {path}: expected {{"users": [...]}}')
    return data


def set_user(path: Path, name: str, role: Role, password: str) -> None:
    """Add the user, or give it a new role and password."""
    if not _NAME.match(name):
        raise UsersFileError(f"registry user {name!r}: letters, digits, '.', '_', '@', '-'")
    if role not in ROLES:
        raise UsersFileError(f"registry user {name!r}: role must be reader or writer")
    salt = secrets.token_bytes(16)
    data = _read(path)
    users = [u for u in data["users"] if u.get("name") != name]
    users.append(
        {"name": name, "role": role, "salt": salt.hex(), "scrypt": _digest(password, salt)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({"users": sorted(users, key=lambda u: u["name"])}, indent=2) + "\n")
    os.replace(partial, path)


class Denied(SchemaError):
    """A request the registry refuses: 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RegistryUsers:
    """The users of one file, reloaded when it changes; `authorize` judges a request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._users: dict[str, dict[str, Any]] = {}
        # An Authorization header already checked -> (user, role): scrypt is slow on purpose,
        # a request must not pay it. Only good headers are kept; a reload empties it.
        self._known: dict[str, tuple[str, Role]] = {}
        self._load()

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            raise UsersFileError(f"registry users file {self.path} does not exist") from None
        if mtime == self._mtime:
            return
        self._users = {u["name"]: u for u in _read(self.path)["users"]}
        self._known = {}
        self._mtime = mtime

    def authenticate(self, header: str | None) -> tuple[str, Role]:
        self._load()
        known = self._known.get(header) if header else None
        if known is not None:
            return known
        realm = "credentials needed (HTTP basic auth: USER:PASSWORD)"
        if not header:
            raise Denied(401, 40101, f"Unauthorized: {realm}")
        scheme, _, token = header.partition(" ")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if scheme.lower() != "basic" or ":" not in decoded:
            raise Denied(401, 40101, f"Unauthorized: {realm}")
        name, _, password = decoded.partition(":")
        user = self._users.get(name)
        if user is None or not hmac.compare_digest(
            _digest(password, bytes.fromhex(user["salt"])), user["scrypt"]
        ):
            raise Denied(401, 40101, f"Unauthorized: wrong user or password for {name!r}")
        found: tuple[str, Role] = (name, user["role"])
        if len(self._known) < 4 * len(self._users) + 16:
            self._known[header] = found
        return found

    def authorize(self, method: str, path: str, header: str | None) -> str | None:
        """The user allowed to make this request (None for an open path), or Denied."""
        if path in OPEN_PATHS:
            return None
        name, role = self.authenticate(header)
        if role != "writer" and is_write(method, path):
            raise Denied(
                403, 40301,
                f"User {name!r} (reader) is denied {method} {path}: only writers may register, "
                "delete or change configs",
            )  # fmt: skip
        return name


def is_write(method: str, path: str) -> bool:
    """Register a schema, delete anything, change a config or mode: a writer's requests.
    Lookups (POST /subjects/X) and compatibility checks (POST /compatibility/...) only read."""
    if method in ("PUT", "DELETE"):
        return True
    return method == "POST" and bool(_REGISTER.match(path))
