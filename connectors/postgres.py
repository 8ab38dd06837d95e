"""The connectors' PostgreSQL edge: connecting with one-line errors, naming a DSN without
its password, and table names from a `name` or `schema.name` setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from keel.errors import KeelError

CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class TableName:
    """Names derived from a table setting (`name` or `schema.name`)."""

    schema: str | None
    name: str

    @classmethod
    def of(cls, qualified: str) -> Self:
        schema, _, name = qualified.rpartition(".")
        return cls(schema or None, name)

    def ident(self, suffix: str = "") -> sql.Identifier:
        parts = (self.schema, self.name + suffix) if self.schema else (self.name + suffix,)
        return sql.Identifier(*parts)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable DSN"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(
    dsn: str, *, application: str, setting: str, error: type[KeelError]
) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit), or `error` in one line naming
    the `setting` (a malformed DSN) or the server (one that does not answer)."""
    try:
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name=application
        )
    except psycopg.ProgrammingError as exc:  # a malformed DSN
        raise error(f"{setting}: {first_line(exc)}") from None
    except psycopg.Error as exc:
        raise error(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {first_line(exc)}"
        ) from None
