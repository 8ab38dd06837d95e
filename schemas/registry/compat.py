"""Compatibility checks with Apache Avro's own checker (the `avro` package)."""

from __future__ import annotations

import json
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
DEFAULT_LEVEL = "BACKWARD"


def parse(text: str) -> avro.schema.Schema:
    """Parse with Apache Avro; raises avro.errors.SchemaParseException / ValueError."""
    return avro.schema.parse(text)


def _problems(
    reader: avro.schema.Schema, writer: avro.schema.Schema, reader_json: Any, role: str
) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    fields = sorted({_field_at(reader_json, loc) for loc in result.locations} - {""})
    where = f" (field {', '.join(fields)})" if fields else ""
    out = []
    for message in sorted(result.messages):
        text = message
        if message in fields or message.split(".")[-1] in {f.split(".")[-1] for f in fields}:
            # The checker names a reader field that the writer lacks and that has no default.
            text = f"field {message!r} is missing in the writer's data and has no default"
        out.append(f"{role}: {text}{where}")
    return out


def _field_at(schema: Any, location: str) -> str:
    """'/fields/2/type' -> the name of field 2 (dotted for nested records)."""
    names: list[str] = []
    node = schema
    parts = [p for p in location.split("/") if p]
    i = 0
    while i < len(parts):
        if parts[i] == "fields" and i + 1 < len(parts) and isinstance(node, dict):
            field = node["fields"][int(parts[i + 1])]
            names.append(field["name"])
            node = field["type"]
            i += 2
        elif parts[i] == "type":
            i += 1
        else:
            break
    return ".".join(names)


def check(new_text: str, existing_texts: list[str], level: str) -> list[str]:
    """Messages naming every incompatibility of `new_text` with the versions it must read or
    be read by under `level` (the latest only, or all for *_TRANSITIVE); [] if compatible."""
    if level == "NONE" or not existing_texts:
        return []
    against = existing_texts if level.endswith("_TRANSITIVE") else existing_texts[-1:]
    new = parse(new_text)
    new_json = json.loads(new_text)
    problems: list[str] = []
    for old_text in against:
        old = parse(old_text)
        old_json = json.loads(old_text)
        if level.startswith(("BACKWARD", "FULL")):
            problems += _problems(
                new, old, new_json, "new schema cannot read data written by an existing version"
            )
        if level.startswith(("FORWARD", "FULL")):
            problems += _problems(
                old, new, old_json, "an existing version cannot read data written by the new schema"
            )
    return problems
