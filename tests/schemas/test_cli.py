"""`keel schemas check|register|list` through the real console script: a CI gate that exits
non-zero naming the incompatible field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from keel.schemas.catalog import CATALOG_DIR

KEEL = str(Path(sys.executable).parent / "keel")


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEEL, *args], capture_output=True, text=True, env=dict(os.environ), timeout=60, check=False
    )


def copy_catalog(tmp_path: Path, topic: str) -> Path:
    """The starter catalog routed to a topic of this test's own, so subjects are unique."""
    root = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, root)
    for path in root.rglob("*.avsc"):
        schema = json.loads(path.read_text())
        schema["keel.topic"] = topic
        path.write_text(json.dumps(schema))
    return root


def test_register_list_and_check(schema_registry: str, tmp_path: Path) -> None:
    topic = f"cli-{os.urandom(4).hex()}"
    catalog = copy_catalog(tmp_path, topic)
    before = keel("schemas", "check", "--catalog", str(catalog))
    assert before.returncode == 0, before.stderr
    assert "new          order.placed" in before.stdout
    registered = keel("schemas", "register", "--catalog", str(catalog))
    assert registered.returncode == 0, registered.stderr
    assert f"{topic}-keel.events.OrderPlaced" in registered.stdout
    same = keel("schemas", "check", "--catalog", str(catalog))
    assert same.returncode == 0 and "registered:" in same.stdout and "new " not in same.stdout
    listed = keel("schemas", "list", "--registry", "--json")
    assert f"{topic}-keel.events.OrderPlaced" in {
        row["subject"] for row in json.loads(listed.stdout)
    }

    # A compatible change (an optional field) passes the gate.
    path = catalog / "events" / "order.placed.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(schema))
    compatible = keel("schemas", "check", "--catalog", str(catalog))
    assert compatible.returncode == 0, compatible.stderr
    assert "compatible   order.placed" in compatible.stdout

    # A change that breaks BACKWARD compatibility fails the gate, naming the field.
    for field in schema["fields"]:
        if field["name"] == "order_id":
            field["type"] = "long"
    path.write_text(json.dumps(schema))
    checked = keel("schemas", "check", "--catalog", str(catalog))
    assert checked.returncode == 1
    assert "INCOMPATIBLE order.placed" in checked.stdout
    assert "order_id" in checked.stderr


def test_check_offline_names_an_invalid_file(tmp_path: Path) -> None:
    (tmp_path / "bad.thing.avsc").write_text(
        '{"type": "record", "name": "B", "fields": [{"name": "x"}]}'
    )
    result = keel("schemas", "check", "--offline", "--catalog", str(tmp_path))
    assert result.returncode == 1
    assert "bad.thing.avsc" in result.stderr


def test_unreachable_registry_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_SCHEMA_REGISTRY_URL": "http://127.0.0.1:9"}
    result = subprocess.run(
        [KEEL, "schemas", "check"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr
