"""mypy over Keel's one import namespace (`make lint`):  .venv/bin/python -m tests.typecheck

The component folders at the top of the tree are installed as `keel.*` (`streams/` is
`keel.streams`, pyproject.toml's `package-dir`). The editable install maps them with an
import hook, which mypy cannot follow (python/mypy#13392): `mypy -p keel.streams` finds
nothing, and an import of `keel.streams.app` would be silently untyped. So this hands mypy
the files under their installed names, with the settings of pyproject.toml's `[tool.mypy]`;
its messages name the files where they are. Extra arguments go to mypy (`--no-incremental`).
"""

# keel-namespace: old names on purpose (the rename script leaves this file alone)
from __future__ import annotations

import sys
from pathlib import Path

from mypy import build
from mypy.errors import CompileError
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent
CORE = "keel"
COMPONENTS = ("schemas", "producers", "streams", "consumers", "connectors")


def installed_name(module: str) -> str:
    """`streams.app` (the name mypy gives a file of `streams/`) as installed: `keel.streams.app`."""
    return f"{CORE}.{module}" if module.partition(".")[0] in COMPONENTS else module


def main(argv: list[str]) -> int:
    targets = [str(ROOT / name) for name in (CORE, *COMPONENTS)]
    sources, options = process_options([*argv, *targets])
    renamed = [
        BuildSource(s.path, installed_name(s.module or ""), s.text, s.base_dir) for s in sources
    ]
    try:
        result = build.build(renamed, options)
        messages = result.errors
    except CompileError as exc:  # a blocking error (syntax, a module found twice)
        messages = exc.messages
    for line in messages:
        print(line)
    errors = [m for m in messages if ": error:" in m]
    files = {m.split(":", 1)[0] for m in errors}
    if errors:
        print(
            f"Found {len(errors)} error{'s' * (len(errors) != 1)} in {len(files)} "
            f"file{'s' * (len(files) != 1)} (checked {len(renamed)} source files)"
        )
        return 1
    if messages:  # blocking errors other than `error:` lines
        return 2
    print(f"Success: no issues found in {len(renamed)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
