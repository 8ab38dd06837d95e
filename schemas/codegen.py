"""What the schema compilers share (`keel.schemas.fastpath` encodes, `keel.schemas.fastread` decodes):
generated Python source built line by line, with named constants, then compiled once."""

from __future__ import annotations

from typing import Any


class Unsupported(Exception):
    """A schema construct a compiler leaves to the reference path (fastavro)."""


class Source:
    """Lines of one generated function body, and the constants it refers to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def var(self, stem: str) -> str:
        """A fresh local name."""
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value: Any) -> str:
        """A name for `value` in the generated code's globals."""
        name = self.var("K")
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)
