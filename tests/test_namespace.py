"""One import namespace: the component folders at the top of the tree (`streams/`,
`schemas/`, ...) are installed as `keel.streams`, `keel.schemas`, ... (pyproject.toml's
`package-dir`), so nothing Keel installs collides with a user's own `streams` or `schemas`.

Tests run from the repository root, where the folders are importable under their old
top-level names by accident: an import of `streams.app` would then load a second copy of the
module beside `keel.streams.app`. These checks keep the old names from creeping back."""

# keel-namespace: old names on purpose (the rename script leaves this file alone)
from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = "keel"
COMPONENTS = ("schemas", "producers", "streams", "consumers", "connectors")
PYTHON_TREES = (CORE, *COMPONENTS, "tests", "bench", "deploy")
# Text the old module names would run from: `python -m streams ...`
TEXT_FILES = (
    "Makefile",
    "Dockerfile",
    "docker-compose.yml",
    ".ci/run",
    "README.md",
    "DEVELOPING.md",
)
DASH_M = re.compile(rf"-m\s+({'|'.join(COMPONENTS)})(?![\w.\-/])")
OLD_IMPORT_TEXT = re.compile(
    rf"^\s*(?:from\s+({'|'.join(COMPONENTS)})[.\s]|import\s+({'|'.join(COMPONENTS)})\b)", re.M
)


def _sources() -> list[Path]:
    found = []
    for tree in PYTHON_TREES:
        found += [p for p in (ROOT / tree).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(found)


def _old(name: str | None) -> bool:
    return bool(name) and str(name).split(".")[0] in COMPONENTS


def _run_module_args(tree: ast.AST) -> list[tuple[int, str]]:
    """Bare module names run with `-m`: `python_module("X", ...)` and `[..., "-m", "X", ...]`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "python_module":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
        if isinstance(node, ast.List | ast.Tuple):
            items = node.elts
            for flag, module in itertools.pairwise(items):
                if (
                    isinstance(flag, ast.Constant)
                    and flag.value == "-m"
                    and isinstance(module, ast.Constant)
                    and isinstance(module.value, str)
                ):
                    found.append((module.lineno, module.value))
    return found


def test_no_module_imports_a_component_by_its_old_top_level_name() -> None:
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _old(node.module):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: import {alias.name}"
                    for alias in node.names
                    if _old(alias.name)
                ]
        offenders += [
            f"{path.relative_to(ROOT)}:{line}: -m {module}"
            for line, module in _run_module_args(tree)
            if _old(module)
        ]
    assert offenders == [], "import these as keel.<name>:\n" + "\n".join(offenders)


def test_no_command_or_example_runs_an_old_module_name() -> None:
    offenders = []
    for name in TEXT_FILES:
        path = ROOT / name
        if not path.exists():
            continue
        text = path.read_text()
        for pattern in (DASH_M, OLD_IMPORT_TEXT):
            offenders += [
                f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
                for m in pattern.finditer(text)
            ]
    assert offenders == [], "\n".join(offenders)


def test_the_detectors_catch_the_old_names() -> None:
    """The checks above can fail: each old form is found in a snippet."""
    tree = ast.parse(
        "import streams.app\nfrom schemas import serde\n"
        "argv = [sys.executable, '-m', 'consumers', 'worker']\npython_module('connectors')\n"
    )
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert len(imports) == 2
    assert [m for _, m in _run_module_args(tree)] == ["consumers", "connectors"]
    assert DASH_M.search("python -m producers ingest")
    assert not DASH_M.search("python -m keel.producers ingest")
    assert OLD_IMPORT_TEXT.search("    from streams.testing import run\n")
    assert not OLD_IMPORT_TEXT.search("data from streams goes on\n")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tree_packages() -> set[str]:
    """Every folder holding a file under keel/ and the components, by its installed name."""
    names = set()
    for top in (CORE, *COMPONENTS):
        base = ROOT / top
        prefix = CORE if top == CORE else f"{CORE}.{top}"
        for folder in [base, *(p for p in base.rglob("*") if p.is_dir())]:
            rel = folder.relative_to(base).parts
            if "__pycache__" in rel or not any(f.is_file() for f in folder.iterdir()):
                continue
            names.add(".".join((prefix, *rel)))
    return names


def test_the_package_list_names_every_folder_of_the_tree() -> None:
    """setuptools ships only the listed packages: a new subpackage left out of the list would
    work in the editable install and be missing from the wheel."""
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == {f"{CORE}.{c}": c for c in COMPONENTS}
    assert set(tool["packages"]) == _tree_packages()


def test_every_entry_point_names_a_keel_module() -> None:
    project = _pyproject()["project"]
    targets = list(project["scripts"].values())
    for group in project["entry-points"].values():
        targets += list(group.values())
    for target in targets:
        module = target.split(":")[0]
        assert module.split(".")[0] == CORE, target
        assert importlib.util.find_spec(module) is not None, target


def test_the_install_maps_keel_names_to_the_folders_and_no_old_name(tmp_path: Path) -> None:
    """Outside the repository (no accidental path), as any user's process sees the install."""
    names = [*(f"{CORE}.{c}" for c in COMPONENTS), *COMPONENTS]
    probe = (
        "import importlib.util, json, sys\n"
        "specs = {n: importlib.util.find_spec(n) for n in sys.argv[1:]}\n"
        "print(json.dumps({n: s.origin if s else None for n, s in specs.items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    origins = json.loads(out.stdout)
    for component in COMPONENTS:
        assert origins[component] is None, f"{component} is importable at top level"
        assert origins[f"{CORE}.{component}"] == str(ROOT / component / "__init__.py")


@pytest.mark.integration
def test_the_wheel_holds_one_namespace(tmp_path: Path) -> None:
    """The wheel built from what the Dockerfile copies (pip's isolated build, as its `pip
    install .` does) puts every module under keel/ and ships every file of the packages'
    folders (data too). Marked integration: the isolated build fetches setuptools."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in (CORE, *COMPONENTS):
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("keel-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    assert {n.split("/")[0] for n in names} == {CORE}
    for top in (CORE, *COMPONENTS):
        base = ROOT / top
        prefix = CORE if top == CORE else f"{CORE}/{top}"
        files = {
            f"{prefix}/{p.relative_to(base).as_posix()}"
            for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert files <= names, sorted(files - names)
