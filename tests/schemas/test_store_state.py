"""The registry's log rules on plain values: replicas replaying the same log agree, a race
loser's record never wins, and compaction (last record per key, tombstones dropped) leaves a
log that replays to the same state."""

from __future__ import annotations

import json
from typing import Any

from keel.schemas.registry.store import State, schema_key

Record = tuple[dict[str, Any], dict[str, Any] | None]


def text(name: str) -> str:
    return json.dumps({"type": "record", "name": name, "fields": []})


def put(subject: str, version: int, schema_id: int, schema: str, deleted: bool = False) -> Record:
    value = {"subject": subject, "version": version, "id": schema_id, "schema": schema,
             "deleted": deleted}  # fmt: skip
    return schema_key(subject, version, schema_id, schema), value


def withdraw(subject: str, version: int, schema_id: int, schema: str) -> Record:
    return schema_key(subject, version, schema_id, schema), None


def replay(log: list[Record]) -> dict[str, Any]:
    state = State()
    for key, value in log:
        state.apply(key, value)
    subjects = {
        s: {v: (e.schema_id, state.schemas[e.schema_id], e.deleted) for v, e in vs.items()}
        for s, vs in state.subjects.items()
        if vs
    }
    return {"subjects": subjects, "config": state.config}


def compact(log: list[Record]) -> list[Record]:
    """What Kafka keeps of a compacted topic once it cleaned everything: the last record of
    each key at its offset, tombstones gone."""
    last = {json.dumps(k, sort_keys=True): i for i, (k, _v) in enumerate(log)}
    return [(k, v) for i, (k, v) in enumerate(log)
            if last[json.dumps(k, sort_keys=True)] == i and v is not None]  # fmt: skip


A, B = text("A"), text("B")


def test_first_record_for_an_id_wins_and_the_loser_retries() -> None:
    log = [
        put("s1", 1, 5, A),
        put("s2", 1, 5, B),  # replica 2 picked the same id: ignored by everyone
        withdraw("s2", 1, 5, B),  # ...so replica 2 withdraws it and retries with id 6
        put("s2", 1, 6, B),
    ]
    expected = {"s1": {1: (5, A, False)}, "s2": {1: (6, B, False)}}
    assert replay(log)["subjects"] == expected
    assert replay(compact(log))["subjects"] == expected


def test_same_subject_version_and_id_with_another_schema_never_wins() -> None:
    """Two replicas race for (s, v1, id 5) with different schemas: the keys differ by the
    schema hash, so compaction cannot let the loser's record replace the winner's."""
    log = [put("s", 1, 5, A), put("s", 1, 5, B), withdraw("s", 1, 5, B), put("s", 2, 6, B)]
    expected = {"s": {1: (5, A, False), 2: (6, B, False)}}
    assert replay(log)["subjects"] == expected
    assert replay(compact(log))["subjects"] == expected


def test_a_deleted_winner_does_not_resurrect_the_loser() -> None:
    log = [
        put("s1", 1, 5, A),
        put("s2", 1, 5, B),
        withdraw("s2", 1, 5, B),
        put("s2", 1, 6, B),
        put("s1", 1, 5, A, deleted=True),  # soft delete
        withdraw("s1", 1, 5, A),  # permanent delete
    ]
    assert replay(log)["subjects"] == {"s2": {1: (6, B, False)}}
    assert replay(compact(log))["subjects"] == {"s2": {1: (6, B, False)}}


def test_soft_delete_and_config_survive_compaction() -> None:
    log: list[Record] = [
        put("s", 1, 1, A),
        put("s", 2, 2, B),
        put("s", 1, 1, A, deleted=True),
        ({"keytype": "CONFIG", "subject": "s", "magic": 0}, {"compatibilityLevel": "FULL"}),
        ({"keytype": "CONFIG", "subject": None, "magic": 0}, {"compatibilityLevel": "NONE"}),
        ({"keytype": "CONFIG", "subject": None, "magic": 0}, None),
    ]
    state = replay(log)
    assert state["subjects"] == {"s": {1: (1, A, True), 2: (2, B, False)}}
    assert state["config"] == {"s": "FULL"}
    assert replay(compact(log)) == state
