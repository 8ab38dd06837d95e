"""Principals and their ACLs as code: the declared file (`acls.toml`), the cluster's ACLs, and
the plan between them.

Responsible for:
- reading and validating `acls.toml` (one principal per Keel component and what it may do:
  topics it reads, writes or creates, its consumer groups, cluster operations; a name that
  ends in `*` is a prefix, Kafka's PREFIXED pattern);
- the plan, a pure function of the declared bindings and the cluster's: bindings to add (+)
  and, for the principals the file declares, bindings the file no longer grants (-);
  principals the file does not name are unmanaged and never touched;
- applying a plan and checking that the cluster then shows it.

Every binding is an ALLOW from any host: least privilege comes from granting only what a
component needs, with the brokers' `allow.everyone.if.no.acl.found=false`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keel.errors import KafkaEdgeError, KeelError
from keel.kafka import kafka_call

DEFAULT_FILE = Path("acls.toml")
_PRINCIPAL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RESOURCE = re.compile(r"[a-zA-Z0-9._-]{1,249}\*?|\*")

ResourceKind = Literal["topic", "group", "cluster"]
_KIND = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}
_KIND_OF: dict[ResourceType, ResourceKind] = {
    ResourceType.TOPIC: "topic", ResourceType.GROUP: "group", ResourceType.BROKER: "cluster",
}  # fmt: skip
CLUSTER_NAME = "kafka-cluster"  # the one name of Kafka's CLUSTER resource


class AclsError(KeelError):
    """A plan that cannot be applied, or an apply that did not finish."""


class AclsFileError(AclsError):
    """The ACL file is missing, not TOML, or does not follow the schema."""


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: `principal` may do `operation` on the resource (any host)."""

    principal: str  # the user name, without Kafka's "User:" prefix
    kind: ResourceKind
    name: str
    prefixed: bool
    operation: str  # Kafka's operation name: READ, WRITE, CREATE, DESCRIBE, ALTER, ...

    def __str__(self) -> str:
        pattern = f"{self.name}*" if self.prefixed else self.name
        return f"User:{self.principal} {self.operation} {self.kind} {pattern}"

    def to_binding(self) -> AclBinding:
        return AclBinding(
            _KIND[self.kind], self.name,
            ResourcePatternType.PREFIXED if self.prefixed else ResourcePatternType.LITERAL,
            f"User:{self.principal}", "*", AclOperation[self.operation], AclPermissionType.ALLOW,
        )  # fmt: skip

    def to_filter(self) -> AclBindingFilter:
        binding = self.to_binding()
        return AclBindingFilter(
            binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type,
        )  # fmt: skip


# -- the file --------------------------------------------------------------------------


def _resources(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of names")
    for v in value:
        if not _RESOURCE.fullmatch(v):
            raise ValueError(f"{v!r} is not a topic or group name (a trailing * makes a prefix)")
    return list(value)


class PrincipalDecl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The SASL user name (Kafka principal User:NAME).")
    description: str = ""
    read: list[str] = Field(default_factory=list, description="Topics it reads.")
    write: list[str] = Field(default_factory=list, description="Topics it writes.")
    create: list[str] = Field(default_factory=list, description="Topics it may create.")
    configure: list[str] = Field(
        default_factory=list, description="Topics whose configs it reads and alters."
    )
    groups: list[str] = Field(default_factory=list, description="Consumer groups it joins.")
    describe_groups: list[str] = Field(
        default_factory=list, description="Groups whose offsets it only reads (lag)."
    )
    cluster: list[str] = Field(
        default_factory=list, description="Cluster operations (DESCRIBE, ALTER, ...)."
    )

    @field_validator("name")
    @classmethod
    def _principal_name(cls, name: str) -> str:
        if not _PRINCIPAL.fullmatch(name):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 64)")
        return name

    @field_validator(
        "read", "write", "create", "configure", "groups", "describe_groups", mode="before"
    )
    @classmethod
    def _names(cls, value: Any) -> list[str]:
        return _resources(value)

    @field_validator("cluster", mode="before")
    @classmethod
    def _cluster_ops(cls, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValueError("must be a list of operations")
        names = {op.name for op in AclOperation} - {"ANY", "UNKNOWN"}
        for op in value:
            if op not in names:
                raise ValueError(f"{op!r} is not a Kafka operation ({', '.join(sorted(names))})")
        return list(value)

    def acls(self) -> set[Acl]:
        out: set[Acl] = set()

        def grant(kind: ResourceKind, names: Iterable[str], *operations: str) -> None:
            for raw in names:
                prefixed = raw.endswith("*") and raw != "*"
                name = raw[:-1] if prefixed else raw
                for op in operations:
                    out.add(Acl(self.name, kind, name, prefixed, op))

        grant("topic", self.read, "READ")  # READ and WRITE imply DESCRIBE in Kafka
        grant("topic", self.write, "WRITE")
        grant("topic", self.create, "CREATE")
        grant("topic", self.configure, "DESCRIBE_CONFIGS", "ALTER_CONFIGS")
        grant("group", self.groups, "READ")
        grant("group", self.describe_groups, "DESCRIBE")
        grant("cluster", [CLUSTER_NAME] if self.cluster else [], *self.cluster)
        return out


class AclsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    principals: list[PrincipalDecl] = Field(default_factory=list)

    @field_validator("principals")
    @classmethod
    def _unique(cls, principals: list[PrincipalDecl]) -> list[PrincipalDecl]:
        seen: set[str] = set()
        for p in principals:
            if p.name in seen:
                raise ValueError(f"principal {p.name!r} is declared twice")
            seen.add(p.name)
        return principals

    def names(self) -> list[str]:
        return [p.name for p in self.principals]

    def acls(self) -> set[Acl]:
        return set().union(*(p.acls() for p in self.principals)) if self.principals else set()


def parse_acls(text: str, source: str = "acls.toml") -> AclsFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AclsFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        return AclsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AclsFileError(f"{source}: {_where(data, first['loc'])}: {first['msg']}") from None


def _where(data: Mapping[str, Any], loc: Sequence[int | str]) -> str:
    """`principals[2] (keel-ingest).write` rather than pydantic's tuple."""
    parts: list[str] = []
    node: Any = data
    for step in loc:
        if isinstance(step, int):
            parts[-1] += f"[{step}]"
            node = node[step] if isinstance(node, list) and step < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']})"
        else:
            parts.append(str(step))
            node = node.get(step) if isinstance(node, dict) else None
    return ".".join(parts) or "file"


def load_acls(path: Path) -> AclsFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AclsFileError(f"cannot read the ACL file {path}: {exc.strerror or exc}") from None
    return parse_acls(text, str(path))


# -- the cluster, the plan -------------------------------------------------------------


def observe(admin: AdminClient, timeout: float = 30.0) -> set[Acl]:
    """Every ALLOW binding of the cluster for a `User:` principal, from any host."""
    anything: Any = None  # None matches any name, principal and host (stubs say str)
    everything = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY, anything, anything,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    with kafka_call("describing ACLs", timeout):
        # Kafka answers an empty list, not an error, to a principal that may not describe
        # ACLs: a plan from it would add everything. Ask what this principal may do first.
        cluster = admin.describe_cluster(
            include_authorized_operations=True, request_timeout=timeout
        ).result(timeout)
        allowed = {op.name for op in cluster.authorized_operations or ()}
        if not allowed & {"DESCRIBE", "ALTER", "ALL"}:
            raise KafkaEdgeError(
                "describing ACLs: Broker: Cluster authorization failed (the cluster's "
                "DESCRIBE is needed)",
                code=KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            )
        bindings = admin.describe_acls(everything, request_timeout=timeout).result(timeout)
    return {acl for acl in map(_from_binding, bindings) if acl is not None}


def _from_binding(binding: AclBinding) -> Acl | None:
    restype, operation = binding.restype, binding.operation
    kind = _KIND_OF.get(restype) if isinstance(restype, ResourceType) else None
    if (
        kind is None
        or not isinstance(operation, AclOperation)
        or not binding.principal.startswith("User:")
        or binding.host != "*"
        or binding.permission_type != AclPermissionType.ALLOW
    ):
        return None  # not a shape this file writes: shown to nobody, never touched
    return Acl(
        binding.principal.removeprefix("User:"), kind, binding.name,
        binding.resource_pattern_type == ResourcePatternType.PREFIXED, operation.name,
    )  # fmt: skip


@dataclass(frozen=True)
class AclPlan:
    adds: list[Acl] = field(default_factory=list)
    removes: list[Acl] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)  # principals the file does not name

    @property
    def pending(self) -> bool:
        return bool(self.adds or self.removes)

    def lines(self) -> list[str]:
        return [f"  + {a}" for a in self.adds] + [f"  - {r}" for r in self.removes]

    def summary(self) -> str:
        if not self.pending:
            tail = f"; {len(self.unmanaged)} unmanaged principal(s)" if self.unmanaged else ""
            return f"ACLs match the file{tail}"
        return (
            f"plan: {len(self.adds)} to add, {len(self.removes)} to remove"
            f"{f'; {len(self.unmanaged)} unmanaged principal(s) left alone' if self.unmanaged else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "add": [str(a) for a in self.adds],
            "remove": [str(r) for r in self.removes],
            "unmanaged": self.unmanaged,
            "pending": self.pending,
        }


def compute_plan(declared: AclsFile, observed: Iterable[Acl]) -> AclPlan:
    """What makes the cluster grant exactly what the file says to the principals it names."""
    wanted = declared.acls()
    managed = set(declared.names())
    have = set(observed)
    return AclPlan(
        adds=sorted(wanted - have),
        removes=sorted(a for a in have - wanted if a.principal in managed),
        unmanaged=sorted({a.principal for a in have} - managed),
    )


def plan(admin: AdminClient, declared: AclsFile, timeout: float = 30.0) -> AclPlan:
    return compute_plan(declared, observe(admin, timeout))


def apply(admin: AdminClient, planned: AclPlan, timeout: float = 30.0) -> None:
    """Create the added bindings, then delete the removed ones (so a principal being moved to
    a narrower grant never loses access it keeps)."""
    if planned.adds:
        futures = admin.create_acls([a.to_binding() for a in planned.adds], request_timeout=timeout)
        for binding, future in futures.items():
            _result(future, f"creating ACL {binding}", timeout)
    if planned.removes:
        deleted = admin.delete_acls(
            [r.to_filter() for r in planned.removes], request_timeout=timeout
        )
        for binding_filter, future in deleted.items():
            _result(future, f"deleting ACL {binding_filter}", timeout)


def _result(future: Any, context: str, timeout: float) -> None:
    with kafka_call(context, timeout):
        future.result(timeout)
