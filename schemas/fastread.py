"""Compiled per-schema decoders: Avro binary straight to plain Python values, in one pass.

fastavro's reader reads every value through a file object, a Python method call per value
and per byte of each varint; for Keel's events (a dozen fields) that was most of a stream
worker's decoding time (profiled). `compile_decoder` turns one writer schema, once, into
generated Python source that reads the bytes in place with index arithmetic: a one-byte
varint (short strings' lengths, small longs, union branches) is one subscript, a string one
slice.

It returns what `AvroSerde.decode_plain` returned through fastavro, value for value (a test
checks it over every catalog type and every Avro construct): the schemas it gets have their
`uuid` and `timestamp-micros` logical types stripped, and the logical types left (decimal,
date, ...) go through fastavro's own logical readers. A schema it does not handle (a
recursive named type) compiles to None and fastavro decodes it. Malformed bytes raise
(IndexError, EOFError, ValueError, UnicodeDecodeError, struct.error): the caller turns that
into a `DecodeError`. Like fastavro's schemaless reader, bytes after the record are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import Any

from fastavro.read import LOGICAL_READERS

from keel.schemas.codegen import Source, Unsupported

# (payload, position of the record's first byte) -> the record
Decoder = Callable[[bytes, int], dict[str, Any]]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})
_MAX_DEPTH = 32


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of several bytes (the generated code reads one-byte ones inline)."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def read_size(data: bytes, pos: int) -> tuple[int, int]:
    """A length or count that is not one plain byte: several bytes, or negative (refused)."""
    size, pos = read_long(data, pos)
    if size < 0:
        raise ValueError(f"negative length {size} before byte {pos}")
    return size, pos


class _Compiler:
    def __init__(self) -> None:
        self.src = Source()
        self.named: dict[str, Any] = {}  # full name -> (schema, its namespace)
        self.active: list[str] = []  # named types being generated (recursion guard)

    # -- reading the primitives ------------------------------------------------------
    def long(self, ind: int, target: str) -> None:
        emit = self.src.emit
        emit(ind, "b = data[pos]")
        emit(ind, "if b < 128:")
        emit(ind + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        emit(ind + 1, "pos += 1")
        emit(ind, "else:")
        emit(ind + 1, f"{target}, pos = read_long(data, pos)")

    def sized(self, ind: int, target: str, text: bool) -> None:
        """A length-prefixed string or bytes value."""
        emit = self.src.emit
        emit(ind, "b = data[pos]")
        # One byte holding an even number: a short non-negative length (most of them).
        emit(ind, "if b & 0x81:")
        emit(ind + 1, "end, pos = read_size(data, pos)")
        emit(ind + 1, "end += pos")
        emit(ind, "else:")
        emit(ind + 1, "pos += 1")
        emit(ind + 1, "end = pos + (b >> 1)")
        emit(ind, "if end > total:")
        emit(ind + 1, "raise EOFError(f'{end - pos} bytes wanted at byte {pos} of {total}')")
        emit(ind, f"{target} = data[pos:end]{'.decode()' if text else ''}")
        emit(ind, "pos = end")

    # -- schemas -----------------------------------------------------------------------
    def gen(self, ind: int, schema: Any, target: str, ns: str, depth: int) -> None:
        """Emit code that reads one value of `schema` at `pos` into the variable `target`."""
        if depth > _MAX_DEPTH:
            raise Unsupported("too deep")
        emit = self.src.emit
        if isinstance(schema, list):
            self.union(ind, schema, target, ns, depth)
            return
        if isinstance(schema, dict):
            kind = schema.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                ns = self.define(schema, ns)
            if kind in ("record", "error"):
                self.record(ind, schema, target, ns, depth)
            elif kind == "enum":
                symbols = self.src.const(list(schema["symbols"]))
                self.long(ind, "index")
                emit(ind, "if index < 0: raise ValueError(f'enum index {index}')")
                emit(ind, f"{target} = {symbols}[index]")
            elif kind == "fixed":
                width = int(schema["size"])
                emit(ind, f"end = pos + {width}")
                emit(ind, "if end > total:")
                emit(ind + 1, f"raise EOFError('{width} bytes wanted at byte {{pos}}')")
                emit(ind, f"{target} = data[pos:end]")
                emit(ind, "pos = end")
            elif kind == "array":
                self.array(ind, schema, target, ns, depth)
            elif kind == "map":
                self.map(ind, schema, target, ns, depth)
            elif kind in _PRIMITIVES:
                self.gen(ind, kind, target, ns, depth + 1)
            else:
                raise Unsupported(f"type {kind!r}")
            logical = schema.get("logicalType")
            reader = LOGICAL_READERS.get(f"{kind}-{logical}") if logical else None
            if reader is not None:  # as fastavro does after reading the underlying value
                fn, sub = self.src.const(reader), self.src.const(schema)
                emit(ind, f"{target} = {fn}({target}, {sub}, None)")
            return
        if schema == "null":
            emit(ind, f"{target} = None")
        elif schema == "boolean":
            emit(ind, "b = data[pos]")
            emit(ind, "pos += 1")
            emit(ind, "if b > 1: raise ValueError(f'boolean byte {b}')")
            emit(ind, f"{target} = b == 1")
        elif schema in ("int", "long"):
            self.long(ind, target)
        elif schema in ("float", "double"):
            unpack = self.src.const(Struct("<d" if schema == "double" else "<f").unpack_from)
            emit(ind, f"{target} = {unpack}(data, pos)[0]")
            emit(ind, f"pos += {8 if schema == 'double' else 4}")
        elif schema == "string":
            self.sized(ind, target, text=True)
        elif schema == "bytes":
            self.sized(ind, target, text=False)
        elif isinstance(schema, str):
            self.reference(ind, schema, target, ns, depth)
        else:
            raise Unsupported(repr(schema))

    def define(self, schema: dict[str, Any], ns: str) -> str:
        """Register a named type; returns the namespace its own fields resolve names in."""
        name = str(schema["name"])
        space = schema.get("namespace", ns) if "." not in name else name.rpartition(".")[0]
        full = name if "." in name else (f"{space}.{name}" if space else name)
        self.named[full] = (schema, space)
        return str(space or "")

    def reference(self, ind: int, name: str, target: str, ns: str, depth: int) -> None:
        full = name if "." in name or not ns else f"{ns}.{name}"
        if full not in self.named:
            full = name
        if full not in self.named:
            raise Unsupported(f"unknown type {name!r}")
        if full in self.active:
            raise Unsupported(f"recursive type {full!r}")
        schema, space = self.named[full]
        self.active.append(full)
        try:
            # Generated again in place: the type is already registered, so define() only
            # refreshes it.
            self.gen(ind, schema, target, space, depth + 1)
        finally:
            self.active.pop()

    def record(self, ind: int, schema: dict[str, Any], target: str, ns: str, depth: int) -> None:
        full = self._full(schema, ns)
        pushed = full not in self.active
        if pushed:
            self.active.append(full)
        try:
            names: list[tuple[str, str]] = []
            for field in schema["fields"]:
                v = self.src.var("v")
                self.gen(ind, field["type"], v, ns, depth + 1)
                names.append((str(field["name"]), v))
        finally:
            if pushed:
                self.active.pop()
        body = ", ".join(f"{name!r}: {v}" for name, v in names)
        self.src.emit(ind, f"{target} = {{{body}}}")

    def _full(self, schema: dict[str, Any], ns: str) -> str:
        name = str(schema["name"])
        return name if "." in name or not ns else f"{ns}.{name}"

    def union(self, ind: int, branches: list[Any], target: str, ns: str, depth: int) -> None:
        emit = self.src.emit
        index = self.src.var("u")
        self.long(ind, index)
        for i, branch in enumerate(branches):
            emit(ind, f"{'if' if i == 0 else 'elif'} {index} == {i}:")
            self.gen(ind + 1, branch, target, ns, depth + 1)
        emit(ind, "else:")
        emit(ind + 1, f"raise ValueError(f'union branch {{{index}}} of {len(branches)}')")

    def blocks(self, ind: int, count: str) -> None:
        """The loop head of an array's or map's blocks (a negative count is followed by the
        block's size in bytes, which a reader may skip)."""
        emit = self.src.emit
        emit(ind, "while True:")
        self.long(ind + 1, count)
        emit(ind + 1, f"if {count} == 0: break")
        emit(ind + 1, f"if {count} < 0:")
        emit(ind + 2, f"{count} = -{count}")
        self.long(ind + 2, "skip")

    def array(self, ind: int, schema: dict[str, Any], target: str, ns: str, depth: int) -> None:
        items, count, item = self.src.var("a"), self.src.var("c"), self.src.var("i")
        self.src.emit(ind, f"{items} = []")
        self.blocks(ind, count)
        self.src.emit(ind + 1, f"for _ in range({count}):")
        self.gen(ind + 2, schema["items"], item, ns, depth + 1)
        self.src.emit(ind + 2, f"{items}.append({item})")
        self.src.emit(ind, f"{target} = {items}")

    def map(self, ind: int, schema: dict[str, Any], target: str, ns: str, depth: int) -> None:
        values, count = self.src.var("m"), self.src.var("c")
        key, item = self.src.var("k"), self.src.var("i")
        self.src.emit(ind, f"{values} = {{}}")
        self.blocks(ind, count)
        self.src.emit(ind + 1, f"for _ in range({count}):")
        self.sized(ind + 2, key, text=True)
        self.gen(ind + 2, schema["values"], item, ns, depth + 1)
        self.src.emit(ind + 2, f"{values}[{key}] = {item}")
        self.src.emit(ind, f"{target} = {values}")


def compile_decoder(schema: Any) -> Decoder | None:
    """A decoder of records written with `schema` (parsed JSON, not fastavro-parsed), or
    None when the schema is not a record or holds a construct left to fastavro."""
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
        return None
    compiler = _Compiler()
    try:
        compiler.gen(1, schema, "record", "", 0)
    except (Unsupported, KeyError, TypeError, ValueError):
        return None
    src = compiler.src
    # `total` is the payload's length: every slice is checked against it.
    head = ["def decode(data, pos):", "    total = len(data)"]
    source = "\n".join([*head, *src.lines, "    return record", ""])
    namespace: dict[str, Any] = {"read_long": read_long, "read_size": read_size, **src.consts}
    exec(compile(source, f"<avro decoder {schema.get('name')}>", "exec"), namespace)
    decoder: Decoder = namespace["decode"]
    decoder.source = source  # type: ignore[attr-defined]  # for reading and debugging
    return decoder
