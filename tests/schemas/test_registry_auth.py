"""The registry's basic auth in Confluent's convention, on plain values (no broker): who may
do what, and a users file that holds no password."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from keel.schemas.registry.auth import Denied, RegistryUsers, UsersFileError, is_write, set_user


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def users(tmp_path: Path) -> RegistryUsers:
    path = tmp_path / "users.json"
    set_user(path, "ann", "reader", "ann-secret")
    set_user(path, "bob", "writer", "bob-secret")
    return RegistryUsers(path)


@pytest.mark.parametrize(
    ("method", "path", "write"),
    [
        ("GET", "/subjects", False),
        ("POST", "/subjects/orders-value", False),  # lookup
        ("POST", "/compatibility/subjects/orders-value/versions/latest", False),
        ("POST", "/subjects/orders-value/versions", True),  # register
        ("DELETE", "/subjects/orders-value", True),
        ("PUT", "/config", True),
        ("PUT", "/config/orders-value", True),
    ],
)
def test_only_registering_deleting_and_configuring_are_writes(
    method: str, path: str, write: bool
) -> None:
    assert is_write(method, path) is write


def test_readers_read_writers_also_write(users: RegistryUsers) -> None:
    assert users.authorize("GET", "/subjects", basic("ann", "ann-secret")) == "ann"
    assert users.authorize("POST", "/subjects/x/versions", basic("bob", "bob-secret")) == "bob"
    with pytest.raises(Denied) as denied:
        users.authorize("POST", "/subjects/x/versions", basic("ann", "ann-secret"))
    assert (denied.value.status, denied.value.code) == (403, 40301)
    assert "'ann' (reader)" in denied.value.message


@pytest.mark.parametrize(
    "header",
    [None, "Bearer x", "Basic !!!", basic("ann", "wrong"), basic("nobody", "ann-secret")],
)
def test_no_or_wrong_credentials_are_401(users: RegistryUsers, header: str | None) -> None:
    with pytest.raises(Denied) as denied:
        users.authorize("GET", "/subjects", header)
    assert (denied.value.status, denied.value.code) == (401, 40101)
    assert "secret" not in denied.value.message


def test_probes_and_metrics_stay_open(users: RegistryUsers) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert users.authorize("GET", path, None) is None


def test_the_file_holds_no_password_is_private_and_reloads(
    users: RegistryUsers, tmp_path: Path
) -> None:
    path = users.path
    assert "secret" not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    assert users.authorize("GET", "/subjects", basic("ann", "ann-secret")) == "ann"
    set_user(path, "ann", "reader", "rotated")  # a new password takes effect at once
    with pytest.raises(Denied):
        users.authorize("GET", "/subjects", basic("ann", "ann-secret"))
    assert users.authorize("GET", "/subjects", basic("ann", "rotated")) == "ann"


def test_a_bad_users_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="does not exist"):
        RegistryUsers(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(UsersFileError, match="expected"):
        RegistryUsers(tmp_path / "bad.json")
    with pytest.raises(UsersFileError, match="role must be reader or writer"):
        set_user(tmp_path / "u.json", "x", "admin", "pw")  # type: ignore[arg-type]
