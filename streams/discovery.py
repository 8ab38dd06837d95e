"""Find processors: every module under `keel.streams.processors` (or another package), each
module-level instance of a processor kind. Adding a processor is adding a module."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from keel.streams.errors import ProcessorError
from keel.streams.processor import Processor, unique_names

DEFAULT_PACKAGE = "keel.streams.processors"


def discover(package: str = DEFAULT_PACKAGE, only: Iterable[str] = ()) -> list[Processor]:
    """The processors defined in `package`'s modules, by name; `only` keeps those named
    (an unknown name is an error naming it)."""
    pkg = importlib.import_module(package)
    found: list[Processor] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Processor) and value not in found:
                found.append(value)
    by_name = unique_names(found)
    wanted = [name for name in only if name]
    if wanted:
        unknown = sorted(set(wanted) - set(by_name))
        if unknown:
            raise ProcessorError(
                f"unknown processor(s) {', '.join(unknown)}; known: {', '.join(sorted(by_name))}"
            )
        return [by_name[name] for name in wanted]
    return list(by_name.values())
