"""The ACL file and the plan, on plain values (no broker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keel.acls import Acl, AclsFileError, compute_plan, load_acls, parse_acls

REPO = Path(__file__).resolve().parents[2]


def test_a_principal_becomes_its_bindings() -> None:
    declared = parse_acls(
        """
        [[principals]]
        name = "sink"
        read = ["events"]
        write = ["sink.dlq"]
        create = ["sink.dlq"]
        groups = ["sink-group"]
        describe_groups = ["*"]
        cluster = ["DESCRIBE"]

        [[principals]]
        name = "workers"
        read = ["jobs.*"]
        """
    )
    assert declared.acls() == {
        Acl("sink", "topic", "events", False, "READ"),
        Acl("sink", "topic", "sink.dlq", False, "WRITE"),
        Acl("sink", "topic", "sink.dlq", False, "CREATE"),
        Acl("sink", "group", "sink-group", False, "READ"),
        Acl("sink", "group", "*", False, "DESCRIBE"),
        Acl("sink", "cluster", "kafka-cluster", False, "DESCRIBE"),
        Acl("workers", "topic", "jobs.", True, "READ"),
    }


def test_plan_adds_removes_and_leaves_other_principals_alone() -> None:
    declared = parse_acls('[[principals]]\nname = "ingest"\nwrite = ["events"]\n')
    observed = {
        Acl("ingest", "topic", "events", False, "READ"),  # no longer granted: removed
        Acl("someone-else", "topic", "events", False, "READ"),  # not in the file: untouched
    }
    planned = compute_plan(declared, observed)
    assert planned.adds == [Acl("ingest", "topic", "events", False, "WRITE")]
    assert planned.removes == [Acl("ingest", "topic", "events", False, "READ")]
    assert planned.unmanaged == ["someone-else"]
    assert planned.lines() == [
        "  + User:ingest WRITE topic events",
        "  - User:ingest READ topic events",
    ]
    assert planned.pending
    assert not compute_plan(declared, set(planned.adds)).pending


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[principals]]\nname = 'a b'\n", "principals[0] (a b).name: Value error, use letters"),
        ("[[principals]]\nname = 'x'\nread = ['ev ents']\n", "principals[0] (x).read"),
        ("[[principals]]\nname = 'x'\ncluster = ['FLY']\n", "'FLY' is not a Kafka operation"),
        ("[[principals]]\nname = 'x'\nwrit = ['e']\n", "principals[0] (x).writ"),
        ("[[principals]]\nname = 'x'\n[[principals]]\nname = 'x'\n", "declared twice"),
        ("principals = [", "not valid TOML"),
    ],
)
def test_a_bad_file_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(AclsFileError, match=re.escape(message)):
        parse_acls(text)


def test_the_shipped_file_gives_each_component_its_own_principal() -> None:
    declared = load_acls(REPO / "acls.toml")
    names = declared.names()
    for component in ("ingest", "registry", "streams", "jobs", "outbox", "webhooks", "pgsink",
                      "archive", "ops"):  # fmt: skip
        assert f"keel-{component}" in names
    acls = declared.acls()
    ingest = {a for a in acls if a.principal == "keel-ingest"}
    assert ingest == {Acl("keel-ingest", "topic", "events", False, "WRITE")}
    archive = {a for a in acls if a.principal == "keel-archive"}
    assert {a.operation for a in archive} == {"READ"}  # a sink that writes nothing
