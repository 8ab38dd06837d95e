"""The registry's service on plain state, without HTTP or a broker: what a submitted schema
is, how a version is named, what a registration decides, and the refusals (with Confluent's
codes) raised before anything is written. Registration and deletes through the log are
tested against the broker in test_registry.py."""

from __future__ import annotations

import json

import pytest

from keel.schemas.registry.client import canonical
from keel.schemas.registry.service import (
    Incompatible,
    Invalid,
    NotFound,
    Registry,
    plan,
    registered,
    submitted_schema,
    valid_level,
    version_number,
)
from keel.schemas.registry.store import KafkaStore, State, schema_key
from keel.settings import KeelSettings


def record(name: str, *fields: dict[str, object]) -> str:
    return canonical(json.dumps({"type": "record", "name": name, "fields": list(fields)}))


A = record("R", {"name": "a", "type": "string"})
AB = record("R", {"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0})
B_ONLY = record("R", {"name": "b", "type": "int"})


def put(
    state: State, subject: str, version: int, schema_id: int, text: str, deleted: bool = False
) -> None:
    value = {
        "subject": subject,
        "version": version,
        "id": schema_id,
        "schema": text,
        "deleted": deleted,
    }
    state.apply(schema_key(subject, version, schema_id, text), value)


def registry(*records: tuple[str, int, int, str, bool]) -> Registry:
    """A registry on a store never started: reads work on its state, a write would fail."""
    store = KafkaStore(KeelSettings(), "unit-schemas")
    for subject, version, schema_id, text, deleted in records:
        put(store.state, subject, version, schema_id, text, deleted)
    return Registry(store)


def refused(error: pytest.ExceptionInfo[Exception]) -> tuple[str, int]:
    return type(error.value).__name__, error.value.code  # type: ignore[attr-defined]


def test_a_submitted_schema_is_avro_text_made_canonical() -> None:
    spaced = json.dumps(
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}, indent=4
    )
    assert submitted_schema({"schema": spaced}) == A
    for body in (
        {"schema": A, "schemaType": "PROTOBUF"},
        {"schema": A, "references": [{"name": "x"}]},
        {"schema": " "},
        {},
        {"schema": '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'},
    ):
        with pytest.raises(Invalid) as error:
            submitted_schema(body)
        assert refused(error) == ("Invalid", 42201), body
    with pytest.raises(Invalid) as error:
        valid_level("LOOSE")
    assert refused(error) == ("Invalid", 42203) and "BACKWARD" in str(error.value)


def test_versions_are_named_by_number_latest_or_minus_one() -> None:
    state = State()
    put(state, "s", 1, 1, A)
    put(state, "s", 2, 2, AB)
    put(state, "s", 2, 2, AB, deleted=True)
    assert version_number(state, "s", "latest") == 1 == version_number(state, "s", "-1")
    assert version_number(state, "s", "latest", deleted=True) == 2
    cases = {"x": ("Invalid", 42202), "0": ("Invalid", 42202), "7": ("NotFound", 40402),
             "2": ("NotFound", 40402)}  # fmt: skip
    for version, want in cases.items():
        with pytest.raises((Invalid, NotFound)) as error:
            version_number(state, "s", version)
        assert refused(error) == want, version
    with pytest.raises(NotFound) as error:
        version_number(state, "nope", "1")
    assert refused(error) == ("NotFound", 40401)


def test_a_registration_reuses_what_the_state_has_and_checks_against_live_versions() -> None:
    state = State()
    first = plan(state, "s", A)
    assert (first.existing, first.version, first.schema_id, first.against) == (None, 1, 1, ())
    put(state, "s", 1, 1, A)
    assert plan(state, "s", A).existing == 1  # registered again: its id, nothing written
    # The same schema under another subject keeps its id; a new one takes the next.
    other = plan(state, "t", A)
    assert (other.existing, other.version, other.schema_id) == (None, 1, 1)
    second = plan(state, "s", AB)
    assert (second.version, second.schema_id, second.against, second.level) == (
        2,
        2,
        (A,),
        "BACKWARD",
    )
    # A soft-deleted version is neither reused nor checked against.
    put(state, "s", 1, 1, A, deleted=True)
    again = plan(state, "s", A)
    assert (again.existing, again.version, again.schema_id, again.against) == (None, 2, 1, ())
    state.config.update({None: "FULL", "s": "NONE"})
    assert plan(state, "s", AB).level == "NONE" and plan(state, "t", AB).level == "FULL"


def test_a_registration_knows_when_another_replica_won_the_version() -> None:
    state = State()
    put(state, "s", 1, 1, A)  # another replica's record came first in the log
    put(state, "s", 1, 1, AB)  # ours: same version and id, other schema, ignored
    assert registered(state, "s", 1, 1, A)
    assert not registered(state, "s", 1, 1, AB)
    assert not registered(state, "s", 2, 1, A)


def test_reads_answer_from_the_state() -> None:
    reg = registry(("s", 1, 1, A, False), ("s", 2, 2, AB, False), ("t", 1, 1, A, True))
    assert reg.subjects() == ["s"] and reg.subjects(deleted=True) == ["s", "t"]
    assert reg.version("s", "latest") == {"subject": "s", "version": 2, "id": 2, "schema": AB}
    assert reg.lookup("s", AB)["version"] == 2
    assert reg.lookup("t", A, deleted=True)["version"] == 1
    assert reg.schema_versions("1") == [{"subject": "s", "version": 1}]
    assert reg.schema_subjects("1") == ["s"] and reg.schema_subjects("1", deleted=True) == [
        "s",
        "t",
    ]
    assert [r["version"] for r in reg.schemas("s", deleted=False, latest_only=True)] == [2]
    assert reg.counts() == (2, 1, -1)
    for call, want in (
        (lambda: reg.lookup("s", B_ONLY), ("NotFound", 40403)),
        (lambda: reg.lookup("t", A), ("NotFound", 40401)),
        (lambda: reg.schema("x"), ("NotFound", 40403)),
        (lambda: reg.schema("9"), ("NotFound", 40403)),
        (lambda: reg.subject_level("s"), ("NotFound", 40408)),
    ):
        with pytest.raises(NotFound) as error:
            call()
        assert refused(error) == want
    assert reg.subject_level("s", default_to_global=True) == "BACKWARD"


def test_compatibility_against_one_version_or_every_one_under_a_transitive_level() -> None:
    # v1 has `a`, v2 has `a` and `b`: a schema with `b` only can read v2 but not v1.
    reg = registry(("s", 1, 1, A, False), ("s", 2, 2, AB, False))
    assert reg.compatibility("s", "latest", B_ONLY) == []
    assert reg.compatibility("s", "1", B_ONLY) != []
    reg.store.state.config["s"] = "BACKWARD_TRANSITIVE"
    assert reg.compatibility("s", "latest", B_ONLY) != []
    assert reg.compatibility("new-subject", None, B_ONLY) == []  # nothing to break
    with pytest.raises(NotFound):
        reg.compatibility("new-subject", "1", B_ONLY)


def test_refused_deletes_and_registrations_write_nothing() -> None:
    """The store was never started: any write would fail, so each refusal is decided first."""
    reg = registry(("s", 1, 1, A, False), ("d", 1, 2, AB, True))
    cases = [
        (("s", None, True), 40405),  # permanent before soft
        (("s", "1", True), 40405),
        (("d", None, False), 40404),  # soft twice
        (("d", "1", False), 40406),
        (("nope", None, False), 40401),
    ]
    for args, code in cases:
        with pytest.raises(NotFound) as error:
            reg.delete(*args)
        assert error.value.code == code, args
    reg.store.state.config["s"] = "FULL"
    with pytest.raises(Incompatible) as refusal:
        reg.register("s", B_ONLY)
    assert refusal.value.code == 409 and "'s' (FULL)" in str(refusal.value)
    assert reg.register("s", A) == 1  # already there: answered from the state
