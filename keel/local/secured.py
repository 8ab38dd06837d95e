"""The secured local stack (`keel up --secure`): every component on the SASL_SSL cluster as
its own principal, the registry and the views API asking for credentials.

Once the brokers answer, `provision` makes the stack's security true, as the `admin` super
user: the ACLs of `acls.toml` applied (`keel acls apply`), the topics of `topics.toml`
created (a component may only create what its ACLs allow, ingest nothing) and an API key of
scope `views` for each principal marked `views`; the registry's service writes its users
(each principal `acls.toml` gives a registry role) from `registry_users`. `client_env` then gives each process its own identity: the
SCRAM user and password file, the CA, its registry credentials, its views key.

Secrets stay under KEEL_HOME/security (mode 0600): `registry/NAME` the registry password of a
principal, `registry-users.json` the registry's users (hashed), `views/NAME` a views key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keel.acls import AclsFile, load_acls
from keel.acls import apply as apply_acls
from keel.acls import plan as plan_acls
from keel.apikeys import KeyRefused, KeyStore, create_key, keys_file
from keel.kafka import SILENT_LOG, ensure_topics, make_admin, naming_brokers, wait_for_topics
from keel.local.broker import LocalKafka
from keel.local.security import ADMIN, MECHANISM, LocalSecurity, _write_private
from keel.settings import KeelSettings
from keel.topics import load_topics

Progress = Callable[[str], None]
_SHIPPED = Path(__file__).resolve().parents[2]  # the source tree: acls.toml, topics.toml


def stack_file(name: str) -> Path:
    """`name` in the current folder (the user's edited copy), else the one Keel ships."""
    here = Path(name)
    return here if here.exists() else _SHIPPED / name


@dataclass(frozen=True)
class StackSecurity:
    settings: KeelSettings
    security: LocalSecurity
    acls: AclsFile

    @classmethod
    def of(cls, settings: KeelSettings, cluster: LocalKafka) -> StackSecurity:
        return cls(settings, cluster.security, load_acls(stack_file("acls.toml")))

    @property
    def registry_users_file(self) -> Path:
        return self.security.root / "registry-users.json"

    def registry_password(self, principal: str) -> str:
        return self._secret("registry", principal)

    def registry_users(self) -> list[tuple[str, str, str]]:
        """(user, role, password) of each principal with a registry role: what the registry's
        own service writes into its users file (its format is the registry's)."""
        return [
            (p.name, p.registry, self.registry_password(p.name))
            for p in self.acls.principals
            if p.registry is not None
        ]

    def views_key_file(self, principal: str) -> Path:
        return self.security.root / "views" / principal

    def provision(self, cluster: LocalKafka, progress: Progress) -> None:
        """ACLs, topics, registry users and views keys, each made only where missing."""
        admin_settings = KeelSettings(
            **{**self.settings.model_dump(), **cluster.client_settings(ADMIN)}
        )
        admin = make_admin(admin_settings, logger=SILENT_LOG)
        with naming_brokers(admin_settings):
            planned = plan_acls(admin, self.acls)
            if planned.pending:
                apply_acls(admin, planned)
                progress(f"ACLs of acls.toml applied: {planned.summary()}")
            specs = load_topics(stack_file("topics.toml")).specs()
            created = ensure_topics(admin, specs, settings=admin_settings)
            wait_for_topics(admin, [s.name for s in specs])
        if created:
            progress(f"created topics: {', '.join(created)}")
        store = KeyStore(keys_file(self.settings), scope="views")
        for p in self.acls.principals:
            if p.views and not self._views_key_works(store, p.name):
                key = create_key(keys_file(self.settings), p.name, scopes=["views"])
                self.views_key_file(p.name).parent.mkdir(parents=True, exist_ok=True)
                _write_private(self.views_key_file(p.name), key.encode())
                progress(f"API key (scope views) of {p.name} in {self.views_key_file(p.name)}")

    def client_env(self, principal: str) -> dict[str, str]:
        """The KEEL_* variables that make a process `principal` on the secured stack."""
        env = {
            "KEEL_SECURITY_PROTOCOL": "SASL_SSL",
            "KEEL_SASL_MECHANISM": MECHANISM,
            "KEEL_SASL_USERNAME": principal,
            "KEEL_SASL_PASSWORD_FILE": str(self.security.password_file(principal)),
            "KEEL_SSL_CA_LOCATION": str(self.security.ca_file),
            "KEEL_REGISTRY_USERS_FILE": str(self.registry_users_file),
            "KEEL_VIEWS_REQUIRE_KEY": "true",
        }
        declared = {p.name: p for p in self.acls.principals}.get(principal)
        if declared is not None and declared.registry is not None:
            info = f"{principal}:{self.registry_password(principal)}"
            env["KEEL_SCHEMA_REGISTRY_USER_INFO"] = info
        if declared is not None and declared.views and self.views_key_file(principal).exists():
            env["KEEL_VIEWS_API_KEY"] = self.views_key_file(principal).read_text().strip()
        return env

    def _views_key_works(self, store: KeyStore, principal: str) -> bool:
        path = self.views_key_file(principal)
        if not path.exists():
            return False
        try:
            store.authenticate(f"Bearer {path.read_text().strip()}")
        except KeyRefused:
            return False  # revoked since: a new one
        return True

    def _secret(self, kind: str, principal: str) -> str:
        import secrets

        self.security.password_file(principal)  # checks the name
        path = self.security.root / kind / principal
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(path, secrets.token_urlsafe(24).encode())
        return path.read_text().strip()


def running_secured(settings: KeelSettings) -> tuple[LocalKafka, StackSecurity] | None:
    """The local cluster and its stack security when the recorded cluster is secured."""
    from keel.local.services import local_kafka

    cluster = local_kafka(settings)
    layout = cluster.recorded_layout()
    if not (layout and layout.get("secure")):
        return None
    cluster = local_kafka(settings, int(str(layout["brokers"])), secure=True)
    return cluster, StackSecurity.of(settings, cluster)
