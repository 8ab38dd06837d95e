"""Topics as code: the declared topics file, the cluster as it is, and the plan between them.

Responsible for:
- reading and validating `topics.toml` (pydantic; every problem names the topic and field);
- observing the cluster (partitions, replication factor, effective configs of each topic);
- the plan, computed by a pure function of the two: topics to create, partitions to add,
  configs to set (only keys the file declares), what Kafka cannot do (refusals), replication
  to raise (by reassignment: said how, not done), the durability of each managed topic (its
  replication and min.insync.replicas beside the file's, judged by keel.durability), and the
  topics the file does not mention (unmanaged: listed, never touched);
- applying a plan: refused as a whole when anything in it is refused, checked by the brokers
  (`validate_only`) before the first change, and done when the cluster shows it.

Nothing here deletes a topic or resets a config key taken out of the file.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from keel.durability import ClusterDurability, durability_problems, fix
from keel.errors import KafkaEdgeError, KeelError
from keel.kafka import TopicSpec, cluster_durability, wait_for_topics

DEFAULT_FILE = Path("topics.toml")
# Kafka's rule for topic names (org.apache.kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_CONFIG_KEY = re.compile(r"[a-z][a-z0-9.]*")


class TopicsError(KeelError):
    """A plan that cannot be applied, or an apply that did not finish."""


class TopicsFileError(TopicsError):
    """The topics file is missing, not TOML, or does not follow the schema."""


# -- the file --------------------------------------------------------------------------


def _config_values(value: Any) -> dict[str, str]:
    """Kafka configs are strings on the wire; TOML numbers and booleans are written as Kafka
    reads them back (`true`, `604800000`), so a plan compares like with like."""
    if not isinstance(value, dict):
        raise ValueError("must be a table of config keys and values")
    out: dict[str, str] = {}
    for key, raw in value.items():
        if isinstance(raw, dict):
            # The usual slip: `retention.ms = 1` unquoted is a TOML table {retention: {ms: 1}}.
            dotted, nested = key, raw
            while isinstance(nested, dict) and len(nested) == 1:
                inner, nested = next(iter(nested.items()))
                dotted = f"{dotted}.{inner}"
            raise ValueError(f'{key!r} is a table, not a value: quote dotted keys ("{dotted}" = …)')
        if not _CONFIG_KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a Kafka config name (lower case, digits, dots)")
        if isinstance(raw, bool):
            out[key] = "true" if raw else "false"
        elif isinstance(raw, int | float | str):
            out[key] = str(raw)
        else:
            raise ValueError(f"{key!r} must be a string, number or boolean")
    return out


class Defaults(BaseModel):
    """What every topic gets unless it says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replication_factor: StrictInt | None = Field(None, ge=1)
    config: dict[str, str] = Field(default_factory=dict)

    _config = field_validator("config", mode="before")(_config_values)


class TopicDecl(BaseModel):
    """One `[[topics]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    partitions: StrictInt = Field(ge=1)
    replication_factor: StrictInt | None = Field(None, ge=1)
    config: dict[str, str] = Field(default_factory=dict)

    _config = field_validator("config", mode="before")(_config_values)

    @field_validator("name")
    @classmethod
    def _kafka_name(cls, name: str) -> str:
        if not _TOPIC_NAME.fullmatch(name) or name in {".", ".."}:
            raise ValueError("must be 1-249 characters of letters, digits, '.', '_' and '-'")
        return name


class TopicsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Defaults = Field(default_factory=Defaults)
    topics: list[TopicDecl]

    def specs(self) -> list[TopicSpec]:
        """Each topic with the defaults filled in (replication -1: the broker's default)."""
        rf = self.defaults.replication_factor
        return [
            TopicSpec(
                t.name,
                t.partitions,
                t.replication_factor or rf or -1,
                {**self.defaults.config, **t.config},
            )
            for t in self.topics
        ]


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "int_type": "must be an integer",
    "string_type": "must be a string",
    "list_type": "must be an array of tables ([[topics]])",
    "model_type": "must be a table",
    "dict_type": "must be a table",
}


def parse_topics(text: str, source: str = "topics.toml") -> TopicsFile:
    """Validate a topics file; any problem is one TopicsFileError line naming topic and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopicsFileError(f"{source}: not valid TOML: {exc}") from None
    try:
        parsed = TopicsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(data, e) for e in exc.errors())
        raise TopicsFileError(f"{source}: {problems}") from None
    seen: dict[str, int] = {}
    for index, topic in enumerate(parsed.topics):
        if topic.name in seen:
            raise TopicsFileError(
                f"{source}: topic {topic.name!r} (topics[{index}]): name: declared twice "
                f"(first at topics[{seen[topic.name]}])"
            )
        seen[topic.name] = index
    return parsed


def _problem(data: Mapping[str, Any], error: Any) -> str:
    loc = list(error["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "topics" and isinstance(loc[1], int):
        index = loc[1]
        topics = data.get("topics")
        entry = topics[index] if isinstance(topics, list) and index < len(topics) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"topic {name!r} (topics[{index}])" if isinstance(name, str) else f"topics[{index}]"
        loc = loc[2:]
    what = ".".join(str(p) for p in loc)
    message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] = TopicDecl if where else TopicsFile
        if not where and loc[0] == "defaults":
            model = Defaults
        message = f"unknown key (allowed: {', '.join(model.model_fields)})"
    if error["type"] == "greater_than_equal":
        message = f"must be >= {error['ctx']['ge']} (got {error['input']!r})"
    elif error["type"] in {"int_type", "string_type"}:
        message = f"{message} (got {error['input']!r})"
    return ": ".join(part for part in (where, what, message) if part)


def load_topics(path: Path) -> TopicsFile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopicsFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopicsFileError(f"{path}: cannot be read: {exc}") from None
    return parse_topics(text, str(path))


# -- the cluster -----------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedTopic:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str | None] = field(default_factory=dict)  # effective values


@dataclass(frozen=True)
class ClusterState:
    """Every topic name on the cluster; details for the declared ones that exist."""

    names: frozenset[str]
    topics: dict[str, ObservedTopic]
    durability: ClusterDurability | None = None  # None: not read (no durability report)


def observe(admin: AdminClient, declared: Iterable[str], timeout: float = 30.0) -> ClusterState:
    """Read the cluster: all topic names, and partitions, replication factor and effective
    configs of the declared topics that exist."""
    wanted = set(declared)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaEdgeError.from_kafka_error(exc.args[0], "listing topics") from None
    topics: dict[str, ObservedTopic] = {}
    present = sorted(wanted & set(metadata.topics))
    configs = _describe_configs(admin, present, timeout)
    for name in present:
        meta = metadata.topics[name]
        if meta.error is not None or not meta.partitions:
            raise KafkaEdgeError(f"topic {name} is not usable: {meta.error}")
        rf = max(len(p.replicas) for p in meta.partitions.values())
        topics[name] = ObservedTopic(name, len(meta.partitions), rf, configs[name])
    return ClusterState(frozenset(metadata.topics), topics, cluster_durability(admin, timeout))


def _describe_configs(
    admin: AdminClient, names: Sequence[str], timeout: float
) -> dict[str, dict[str, str | None]]:
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    out: dict[str, dict[str, str | None]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException as exc:
            raise KafkaEdgeError.from_kafka_error(
                exc.args[0], f"reading configs of {resource.name}"
            ) from None
        out[resource.name] = {key: entry.value for key, entry in entries.items()}
    return out


# -- the plan (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionChange:
    topic: str
    old: int
    new: int


@dataclass(frozen=True)
class ConfigChange:
    topic: str
    key: str
    old: str | None  # None: the cluster has no such config (the brokers will say why)
    new: str


@dataclass(frozen=True)
class ReplicationChange:
    """Another replication factor than the topic has: Kafka changes it by reassigning
    partitions, which apply does not do; the plan says how."""

    topic: str
    old: int
    new: int

    @property
    def how(self) -> str:
        verb = "raise" if self.new > self.old else "lower"
        return (
            f"{verb} it by reassigning the partitions (kafka-reassign-partitions.sh --generate, "
            f"give each partition {self.new} replicas, --execute); apply does not"
        )


@dataclass(frozen=True)
class TopicDurability:
    """A managed topic's replication and min.insync.replicas beside the file's (the effective
    values once the plan's config changes are made), and what they fail to promise."""

    topic: str
    replication: int
    declared_replication: int  # -1: left to the cluster
    min_insync: int | None
    declared_min_insync: int | None  # None: left to the cluster
    problems: tuple[str, ...] = ()
    fix: str = ""

    def line(self, cluster: ClusterDurability) -> str:
        file_rf = (
            f"default {cluster.default_replication}"
            if self.declared_replication < 0
            else str(self.declared_replication)
        )
        file_isr = (
            f"default {cluster.min_insync_replicas}"
            if self.declared_min_insync is None
            else str(self.declared_min_insync)
        )
        isr = "?" if self.min_insync is None else str(self.min_insync)
        head = (
            f"{'!' if self.problems else ' '} {self.topic}  replication {self.replication} "
            f"(file: {file_rf})  min.insync.replicas {isr} (file: {file_isr})"
        )
        if not self.problems:
            return head
        return f"{head}: {'; '.join(self.problems)}" + (f"; fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "replication_factor": self.replication,
            "declared_replication_factor": (
                None if self.declared_replication < 0 else self.declared_replication
            ),
            "min_insync_replicas": self.min_insync,
            "declared_min_insync_replicas": self.declared_min_insync,
            "problems": list(self.problems),
            "fix": self.fix or None,
        }


@dataclass(frozen=True)
class Refusal:
    """A difference Kafka cannot reconcile, or a change the brokers rejected; while any is in
    a plan, apply changes nothing."""

    topic: str
    reason: str


@dataclass(frozen=True)
class Plan:
    declared: tuple[TopicSpec, ...]
    creates: tuple[TopicSpec, ...] = ()
    partitions: tuple[PartitionChange, ...] = ()
    configs: tuple[ConfigChange, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    unmanaged: tuple[str, ...] = ()
    replication: tuple[ReplicationChange, ...] = ()
    durability: tuple[TopicDurability, ...] = ()
    cluster: ClusterDurability | None = None

    @property
    def changes(self) -> int:
        return len(self.creates) + len(self.partitions) + len(self.configs)

    @property
    def at_risk(self) -> tuple[TopicDurability, ...]:
        """Managed topics whose durability fails a promise (shown with `!`)."""
        return tuple(d for d in self.durability if d.problems)

    @property
    def pending(self) -> bool:
        """Whether the cluster differs from the file or a managed topic is at risk (refusals,
        replication to reassign and durability problems included: they are drift too)."""
        return bool(self.changes or self.refusals or self.replication or self.at_risk)

    def with_refusals(self, refusals: Iterable[Refusal]) -> Plan:
        return replace(self, refusals=(*self.refusals, *refusals))

    def to_dict(self) -> dict[str, Any]:
        changes: list[dict[str, Any]] = [
            {
                "action": "create",
                "topic": s.name,
                "partitions": s.partitions,
                "replication_factor": None if s.replication_factor < 0 else s.replication_factor,
                "config": dict(s.config),
            }
            for s in self.creates
        ]
        changes += [
            {"action": "partitions", "topic": p.topic, "from": p.old, "to": p.new}
            for p in self.partitions
        ]
        changes += [
            {"action": "config", "topic": c.topic, "key": c.key, "from": c.old, "to": c.new}
            for c in self.configs
        ]
        return {
            "pending": self.pending,
            "changes": changes,
            "refused": [{"topic": r.topic, "reason": r.reason} for r in self.refusals],
            "replication": [
                {"topic": r.topic, "from": r.old, "to": r.new, "how": r.how}
                for r in self.replication
            ],
            "durability": [d.to_dict() for d in self.durability],
            "unmanaged": list(self.unmanaged),
        }

    def lines(self) -> list[str]:
        """The plan for people: each managed topic's durability (`!` when at risk), then one
        line per change, Terraform's signs (+ create, ~ change, ! refused or not apply's to
        make)."""
        cluster = self.cluster
        out = [d.line(cluster) for d in self.durability] if cluster is not None else []
        for s in self.creates:
            rf = str(s.replication_factor)
            if s.replication_factor < 0:
                rf = "default" if cluster is None else f"default {cluster.default_replication}"
            configs = "".join(f"  {k}={v}" for k, v in sorted(s.config.items()))
            out.append(f"+ {s.name}  create: partitions {s.partitions}  replication {rf}{configs}")
        out += [
            f"~ {p.topic}  partitions {p.old} -> {p.new}"
            "  (keys hash to new partitions: per-key order and stream tables move)"
            for p in self.partitions
        ]
        out += [
            f"~ {c.topic}  {c.key}: {'(none)' if c.old is None else c.old} -> {c.new}"
            for c in self.configs
        ]
        out += [f"! {r.topic}  replication {r.old} -> {r.new}: {r.how}" for r in self.replication]
        out += [f"! {r.topic}  cannot: {r.reason}" for r in self.refusals]
        return out

    def summary(self) -> str:
        parts = [
            f"{len(self.creates)} to create",
            f"{len(self.partitions)} to add partitions",
            f"{len(self.configs)} config(s) to set",
        ]
        if self.replication:
            parts.append(f"{len(self.replication)} replication change(s) to reassign")
        if self.at_risk:
            parts.append(f"{len(self.at_risk)} topic(s) at risk (!)")
        if self.refusals:
            parts.append(f"{len(self.refusals)} refused (apply changes nothing until fixed)")
        parts.append(f"{len(self.unmanaged)} unmanaged")
        head = "no changes" if not self.pending else "plan"
        return f"{head}: {', '.join(parts)}"


def is_kafka_internal(name: str) -> bool:
    """`__consumer_offsets`, `__transaction_state` and the like belong to the brokers."""
    return name.startswith("__")


def compute_plan(declared: Sequence[TopicSpec], cluster: ClusterState) -> Plan:
    """The difference between the file and the cluster, as changes Kafka can make and
    refusals for those it cannot."""
    creates: list[TopicSpec] = []
    partitions: list[PartitionChange] = []
    configs: list[ConfigChange] = []
    refusals: list[Refusal] = []
    replication: list[ReplicationChange] = []
    durability: list[TopicDurability] = []
    for spec in declared:
        seen = cluster.topics.get(spec.name)
        if seen is None:
            creates.append(spec)
            continue
        if spec.partitions > seen.partitions:
            partitions.append(PartitionChange(spec.name, seen.partitions, spec.partitions))
        elif spec.partitions < seen.partitions:
            refusals.append(
                Refusal(
                    spec.name,
                    f"partitions {seen.partitions} -> {spec.partitions}: Kafka cannot remove "
                    "partitions (recreate the topic, or declare at least "
                    f"{seen.partitions})",
                )
            )
        if spec.replication_factor > 0 and spec.replication_factor != seen.replication_factor:
            replication.append(
                ReplicationChange(spec.name, seen.replication_factor, spec.replication_factor)
            )
        for key, value in sorted(spec.config.items()):
            old = seen.config.get(key)
            if old != value:
                configs.append(ConfigChange(spec.name, key, old, value))
        if cluster.durability is not None:
            durability.append(_durability(spec, seen, cluster.durability))
    names = {s.name for s in declared}
    unmanaged = sorted(n for n in cluster.names if n not in names and not is_kafka_internal(n))
    return Plan(
        tuple(declared),
        tuple(creates),
        tuple(partitions),
        tuple(configs),
        tuple(refusals),
        tuple(unmanaged),
        tuple(replication),
        tuple(durability),
        cluster.durability,
    )


def _durability(
    spec: TopicSpec, seen: ObservedTopic, cluster: ClusterDurability
) -> TopicDurability:
    """The topic's durability as it will be once apply has set the file's configs."""
    declared_isr = _int(spec.config.get("min.insync.replicas"))
    min_insync = (
        declared_isr if declared_isr is not None else _int(seen.config.get("min.insync.replicas"))
    )
    problems = durability_problems(seen.replication_factor, min_insync, cluster)
    return TopicDurability(
        spec.name,
        seen.replication_factor,
        spec.replication_factor,
        min_insync,
        declared_isr,
        tuple(problems),
        fix(spec.name, seen.replication_factor, min_insync, cluster) if problems else "",
    )


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


# -- talking to the brokers ------------------------------------------------------------


def plan(admin: AdminClient, declared: Sequence[TopicSpec], timeout: float = 30.0) -> Plan:
    """Observe, compute the plan, and let the brokers check each change without making it
    (`validate_only`): what they would reject becomes a refusal now, not half an apply."""
    computed = compute_plan(declared, observe(admin, [s.name for s in declared], timeout))
    return computed.with_refusals(_execute(admin, computed, timeout, validate_only=True))


def apply(admin: AdminClient, planned: Plan, timeout: float = 30.0) -> Plan:
    """Make the changes of `planned` and wait until the cluster shows them; return the plan
    the cluster leaves then (empty unless something else changed it meanwhile).

    Refused as a whole, before any change, when the plan holds a refusal or the brokers
    reject one of its changes."""
    if planned.refusals:
        raise TopicsError(
            "refusing to apply, nothing was changed: "
            + "; ".join(f"{r.topic}: {r.reason}" for r in planned.refusals)
        )
    if not planned.changes:
        return planned
    rejected = _execute(admin, planned, timeout, validate_only=True)
    if rejected:
        raise TopicsError(
            "the brokers reject the plan, nothing was changed: "
            + "; ".join(f"{r.topic}: {r.reason}" for r in rejected)
        )
    failed = _execute(admin, planned, timeout, validate_only=False)
    if failed:
        raise TopicsError(
            "apply failed part way (run plan to see what is left): "
            + "; ".join(f"{r.topic}: {r.reason}" for r in failed)
        )
    if planned.creates:
        wait_for_topics(admin, [s.name for s in planned.creates], timeout)
    return _settled(admin, planned, timeout)


def _settled(admin: AdminClient, planned: Plan, timeout: float) -> Plan:
    """Brokers answer an admin request before every broker's metadata and config cache shows
    it; poll until a fresh plan no longer holds what was applied."""
    applied = _change_keys(planned)
    names = [s.name for s in planned.declared]
    deadline = time.monotonic() + timeout
    while True:
        now = compute_plan(planned.declared, observe(admin, names, timeout))
        if not applied & _change_keys(now):
            return now
        if time.monotonic() > deadline:
            raise TopicsError(f"applied, but the cluster does not show it after {timeout}s")
        time.sleep(0.2)


def _change_keys(planned: Plan) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = {("create", s.name) for s in planned.creates}
    keys |= {("partitions", p.topic) for p in planned.partitions}
    keys |= {("config", c.topic, c.key) for c in planned.configs}
    return keys


def _execute(
    admin: AdminClient, planned: Plan, timeout: float, *, validate_only: bool
) -> list[Refusal]:
    """Send the plan's changes (or only check them); return what the brokers rejected."""
    rejected: list[Refusal] = []

    def collect(futures: Mapping[Any, Any], topic_of: Any) -> None:
        for key, future in futures.items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                rejected.append(
                    Refusal(topic_of(key), f"the brokers reject it: {exc.args[0].str()}")
                )

    if planned.creates:
        new = [s.to_new_topic() for s in planned.creates]
        collect(admin.create_topics(new, request_timeout=timeout, validate_only=validate_only), str)
    if planned.partitions:
        grow = [NewPartitions(p.topic, p.new) for p in planned.partitions]
        futures = admin.create_partitions(
            grow, request_timeout=timeout, validate_only=validate_only
        )
        collect(futures, str)
    if planned.configs:
        by_topic: dict[str, list[ConfigEntry]] = {}
        for c in planned.configs:
            by_topic.setdefault(c.topic, []).append(
                ConfigEntry(c.key, c.new, incremental_operation=AlterConfigOpType.SET)
            )
        resources = [
            ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
            for topic, entries in by_topic.items()
        ]
        altered = admin.incremental_alter_configs(
            resources, request_timeout=timeout, validate_only=validate_only
        )
        collect(altered, lambda resource: resource.name)
    return rejected
