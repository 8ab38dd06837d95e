"""What the registry does, apart from HTTP: reading subjects, versions, ids and levels from
the store's state, registering a schema, deleting versions, changing levels.

No aiohttp here: the REST layer (keel.schemas.registry.app) parses a request, calls one method
and maps a `Refused` to its HTTP status. Refusals carry Confluent's error code, which
clients read: 40401 subject not found, 40402 version not found, 40403 schema not found,
40404 subject soft-deleted, 40405 subject not soft-deleted, 40406 version soft-deleted,
40408 no subject level, 409 incompatible, 42201 invalid schema, 42202 invalid version,
42203 invalid level. A store that cannot be written or read in time raises
`StoreUnavailable`.

Registration is optimistic concurrency on the store's log (see keel.schemas.registry.store):
`plan` decides on this replica's state, the record is written and read back, and a record
another replica wrote first for the same version or id makes this one withdraw and try
again. The methods that write block until the store has applied the write: call them from
a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keel.schemas.errors import SchemaError
from keel.schemas.registry.client import canonical
from keel.schemas.registry.compat import DEFAULT_LEVEL, LEVELS, check, parse
from keel.schemas.registry.store import KafkaStore, State, StoreUnavailable, Version, schema_key

log = logging.getLogger(__name__)
ATTEMPTS = 10  # registrations that lose a race with another replica retry this often
LATEST = ("latest", "-1")


class Refused(SchemaError):
    """A request the registry refuses, with Confluent's error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NotFound(Refused):
    """No such subject, version or schema (or not in the state the request needs)."""


class Incompatible(Refused):
    """The schema breaks the subject's compatibility level."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class Invalid(Refused):
    """A schema, version or level that is not one."""


def submitted_schema(body: Mapping[str, Any]) -> str:
    """The canonical text of the schema a request body submits (Avro only, no references)."""
    schema_type = body.get("schemaType", "AVRO")
    if schema_type != "AVRO":
        raise Invalid(42201, f"schemaType {schema_type!r} is not supported; only AVRO")
    if body.get("references"):
        raise Invalid(42201, "schema references are not supported")
    text = body.get("schema")
    if not isinstance(text, str) or not text.strip():
        raise Invalid(42201, "Invalid schema: the 'schema' field (a string) is required")
    try:
        parse(text)
        return canonical(text)
    except Exception as exc:  # avro raises SchemaParseException, ValueError, TypeError...
        raise Invalid(42201, f"Invalid schema: {exc}") from None


def valid_level(level: Any) -> str:
    if level not in LEVELS:
        raise Invalid(42203, f"Invalid compatibility level {level!r}; one of {', '.join(LEVELS)}")
    return str(level)


# -- pure reads of the state -----------------------------------------------------------
def versions_of(state: State, subject: str, deleted: bool = False) -> dict[int, Version]:
    """The subject's versions (soft-deleted ones too with `deleted`); none is a 40401."""
    versions = state.subjects.get(subject)
    live = {v: e for v, e in (versions or {}).items() if deleted or not e.deleted}
    if not live:
        raise NotFound(40401, f"Subject '{subject}' not found.")
    return live


def version_number(state: State, subject: str, version: str, deleted: bool = False) -> int:
    """A version as a request names it (a number, `latest` or -1) resolved to a number."""
    live = versions_of(state, subject, deleted)
    if version in LATEST:
        return max(live)
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number <= 0:
        raise Invalid(42202, f"The specified version '{version}' is not a valid version id.")
    if number not in live:
        raise NotFound(40402, f"Version {number} not found.")
    return number


def level_of(state: State, subject: str | None) -> str:
    """The level a subject is checked at: its own, else the global one, else BACKWARD."""
    return state.config.get(subject) or state.config.get(None) or DEFAULT_LEVEL


def version_body(state: State, subject: str, version: int) -> dict[str, Any]:
    entry = state.subjects[subject][version]
    schema = state.schemas[entry.schema_id]
    return {"subject": subject, "version": version, "id": entry.schema_id, "schema": schema}


def live_schemas(state: State, subject: str) -> list[str]:
    """The subject's live schemas, oldest first (none for an unknown subject)."""
    versions = state.subjects.get(subject, {})
    return [state.schemas[e.schema_id] for _v, e in sorted(versions.items()) if not e.deleted]


@dataclass(frozen=True)
class Plan:
    """What registering a schema under a subject means on one replica's state: the id it
    already has there (`existing`), else the next version and the id to write, checked
    against `against` at `level`."""

    existing: int | None = None
    version: int = 0
    schema_id: int = 0
    against: tuple[str, ...] = ()
    level: str = DEFAULT_LEVEL


def plan(state: State, subject: str, text: str) -> Plan:
    versions = state.subjects.get(subject, {})
    for entry in versions.values():
        if not entry.deleted and state.schemas.get(entry.schema_id) == text:
            return Plan(existing=entry.schema_id)
    return Plan(
        version=max(versions, default=0) + 1,
        # A schema known under another subject keeps its id.
        schema_id=state.ids.get(text) or state.next_id(),
        against=tuple(live_schemas(state, subject)),
        level=level_of(state, subject),
    )


def registered(state: State, subject: str, version: int, schema_id: int, text: str) -> bool:
    """Whether this replica's record of the version is the one the log kept."""
    applied = state.subjects.get(subject, {}).get(version)
    return (
        applied is not None
        and applied.schema_id == schema_id
        and state.schemas.get(schema_id) == text
    )


def _record(subject: str, version: int, schema_id: int, text: str, deleted: bool) -> Any:
    return {"subject": subject, "version": version, "id": schema_id, "schema": text,
            "deleted": deleted}  # fmt: skip


def _config_key(subject: str | None) -> dict[str, Any]:
    return {"keytype": "CONFIG", "subject": subject, "magic": 0}


class Registry:
    """The registry's operations on one `KafkaStore`."""

    def __init__(self, store: KafkaStore) -> None:
        self.store = store

    # -- reads ---------------------------------------------------------------------------
    def subjects(self, deleted: bool = False) -> list[str]:
        with self.store.reading() as state:
            return sorted(
                s
                for s, vs in state.subjects.items()
                if any(deleted or not v.deleted for v in vs.values())
            )

    def versions(self, subject: str, deleted: bool = False) -> list[int]:
        with self.store.reading() as state:
            return sorted(versions_of(state, subject, deleted))

    def version(self, subject: str, version: str, deleted: bool = False) -> dict[str, Any]:
        """{subject, version, id, schema} of one version."""
        with self.store.reading() as state:
            return version_body(state, subject, version_number(state, subject, version, deleted))

    def lookup(self, subject: str, text: str, deleted: bool = False) -> dict[str, Any]:
        """The oldest version of the subject with this schema."""
        with self.store.reading() as state:
            for version, entry in sorted(versions_of(state, subject, deleted).items()):
                if state.schemas.get(entry.schema_id) == text:
                    return version_body(state, subject, version)
        raise NotFound(40403, "Schema not found")

    def schemas(self, prefix: str, deleted: bool, latest_only: bool) -> list[dict[str, Any]]:
        """Every (subject, version) with its id and schema, of subjects named `prefix*`."""
        rows = []
        with self.store.reading() as state:
            for subject in sorted(s for s in state.subjects if s.startswith(prefix)):
                live = sorted(
                    v for v, e in state.subjects[subject].items() if deleted or not e.deleted
                )
                rows += [
                    version_body(state, subject, v) for v in (live[-1:] if latest_only else live)
                ]
        return rows

    def referenced_by(self, subject: str, version: str) -> list[int]:
        """References are refused at registration, so no version is ever referenced."""
        with self.store.reading() as state:
            version_number(state, subject, version)
        return []

    def schema(self, schema_id: str) -> str:
        """The schema an id names (as a request spells the id)."""
        return self._known(schema_id)[1]

    def schema_versions(self, schema_id: str) -> list[dict[str, Any]]:
        """The live (subject, version)s that use an id."""
        number = self._known(schema_id)[0]
        with self.store.reading() as state:
            return [{"subject": s, "version": v} for s, vs in state.subjects.items()
                    for v, e in sorted(vs.items()) if e.schema_id == number and not e.deleted]  # fmt: skip

    def schema_subjects(self, schema_id: str, deleted: bool = False) -> list[str]:
        number = self._known(schema_id)[0]
        with self.store.reading() as state:
            return sorted(s for s, vs in state.subjects.items()
                          if any(e.schema_id == number and (deleted or not e.deleted)
                                 for e in vs.values()))  # fmt: skip

    def _known(self, schema_id: str) -> tuple[int, str]:
        """An id as a request spells it, and the schema it names."""
        try:
            number = int(schema_id)
        except ValueError:
            raise NotFound(40403, "Schema not found") from None
        with self.store.reading() as state:
            text = state.schemas.get(number)
        if text is None:
            raise NotFound(40403, f"Schema {number} not found")
        return number, text

    def level(self, subject: str | None = None) -> str:
        with self.store.reading() as state:
            return level_of(state, subject)

    def subject_level(self, subject: str, default_to_global: bool = False) -> str:
        """The subject's own level (the global one with `default_to_global`)."""
        with self.store.reading() as state:
            level = state.config.get(subject)
            if level is None and default_to_global:
                return level_of(state, None)
        if level is None:
            raise NotFound(
                40408, f"Subject '{subject}' does not have subject-level compatibility configured"
            )
        return level

    def compatibility(self, subject: str, version: str | None, text: str) -> list[str]:
        """What breaks if `text` were registered (empty: compatible): against one version,
        or all of them under a *_TRANSITIVE level; with no version, as a registration would
        be checked (an unknown subject: compatible)."""
        with self.store.reading() as state:
            level = level_of(state, subject)
            if version is None:
                against = live_schemas(state, subject)
            else:
                number = version_number(state, subject, version)
                live = versions_of(state, subject)
                chosen = sorted(live) if level.endswith("_TRANSITIVE") else [number]
                against = [state.schemas[live[v].schema_id] for v in chosen]
        return check(text, against, level)

    def counts(self) -> tuple[int, int, int]:
        """(schemas, subjects with a live version, offset of the last store record applied)."""
        with self.store.reading() as state:
            subjects = sum(
                any(not v.deleted for v in vs.values()) for vs in state.subjects.values()
            )
            return len(state.schemas), subjects, self.store.applied_offset

    # -- writes (blocking: the store answers once it has read its write back) -------------
    def register(self, subject: str, text: str) -> int:
        """The id of `text` under `subject`: its id if the subject has it, else a new version
        once the subject's level allows it."""
        store = self.store
        with store.write_lock:  # one registration at a time on this replica
            for _attempt in range(ATTEMPTS):
                with store.reading() as state:
                    planned = plan(state, subject, text)
                if planned.existing is not None:
                    return planned.existing
                problems = check(text, list(planned.against), planned.level)
                if problems:
                    raise Incompatible(
                        "Schema being registered is incompatible with an earlier schema for "
                        f"subject '{subject}' ({planned.level}): " + "; ".join(problems)
                    )
                version, schema_id = planned.version, planned.schema_id
                key = schema_key(subject, version, schema_id, text)
                store.write(key, _record(subject, version, schema_id, text, deleted=False))
                with store.reading() as state:
                    if registered(state, subject, version, schema_id, text):
                        return schema_id
                # Another replica's record for this version or id came first in the log.
                # Withdraw ours with a tombstone (every replica ignores it, as it ignored the
                # record), so that compaction removes it and a replay never resurrects it.
                store.write(key, None)
                log.info("registration of %s lost a race with another replica; retrying", subject)
        raise StoreUnavailable(
            f"could not register a version of {subject} after {ATTEMPTS} attempts"
        )

    def delete(self, subject: str, version: str | None, permanent: bool) -> list[int]:
        """Soft-delete (or with `permanent`, remove) one version or, with None, the whole
        subject; the version numbers it deleted."""
        store = self.store
        with store.write_lock:
            with store.reading() as state:
                every = versions_of(state, subject, deleted=True)
                if version is None:
                    # A soft delete answers with the versions it deleted now (the live ones);
                    # a permanent one with every version it removes.
                    live = [v for v, e in every.items() if permanent or not e.deleted]
                    targets = sorted(live or every)
                else:
                    # A number is found among deleted versions too, so a second soft delete
                    # answers 40406; `latest` is the latest live version for a soft delete.
                    found_deleted = permanent or version not in LATEST
                    targets = [version_number(state, subject, version, deleted=found_deleted)]
                entries = {v: (every[v], state.schemas[every[v].schema_id]) for v in targets}
            if permanent:
                if any(not entry.deleted for entry, _text in entries.values()):
                    raise NotFound(
                        40405,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
            elif all(entry.deleted for entry, _text in entries.values()):
                raise NotFound(
                    40404 if version is None else 40406,
                    f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently",
                )
            for number, (entry, text) in entries.items():
                key = schema_key(subject, number, entry.schema_id, text)
                if permanent:
                    store.write(key, None)
                elif not entry.deleted:
                    store.write(key, _record(subject, number, entry.schema_id, text, deleted=True))
        return targets

    def set_level(self, subject: str | None, level: Any) -> str:
        """Set a subject's level (None: the global one)."""
        level = valid_level(level)
        self.store.write(_config_key(subject), {"compatibilityLevel": level})
        return level

    def delete_level(self, subject: str | None) -> str:
        """Drop a subject's own level (None: the global one); the level it had."""
        level = self.level(subject)
        self.store.write(_config_key(subject), None)
        return level
