"""The table: its DDL (`create_table`, idempotent), and a batch written with COPY into a
temporary table and one `INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from keel.connectors.pgsink.rows import PgSinkError, Row
from keel.connectors.postgres import TableName as Table
from keel.connectors.postgres import connect as connect_postgres
from keel.connectors.postgres import first_line
from keel.settings import KeelSettings


def pgsink_dsn(settings: KeelSettings) -> str:
    return (settings.pgsink_dsn or settings.postgres_dsn).get_secret_value()


def connect(dsn: str) -> psycopg.Connection[Any]:
    return connect_postgres(
        dsn, application="keel-pgsink", setting="KEEL_PGSINK_DSN", error=PgSinkError
    )


def create_table(conn: psycopg.Connection[Any], table: Table) -> None:
    """The events table and its indexes; idempotent (IF NOT EXISTS throughout)."""
    t = table.ident()
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " event_id uuid PRIMARY KEY,"
            " type text NOT NULL,"
            " user_id text NOT NULL,"
            " occurred_at timestamptz NOT NULL,"
            " received_at timestamptz NOT NULL,"
            " source text NOT NULL,"
            " topic text NOT NULL,"
            " partition integer NOT NULL,"
            ' "offset" bigint NOT NULL,'
            " event jsonb NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now())"
        ).format(t),
        # "what did this user do", "how many X per day": the usual questions, by time.
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (type, occurred_at)").format(
            sql.Identifier(f"{table.name}_type_idx"), t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (user_id, occurred_at)").format(
            sql.Identifier(f"{table.name}_user_idx"), t
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (occurred_at)").format(
            sql.Identifier(f"{table.name}_occurred_idx"), t
        ),
    ]
    if table.schema:
        statements.insert(
            0, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema))
        )
    try:
        with conn.transaction():
            # Two sinks starting at once must not race on CREATE: serialize on the name.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table.qualified,))
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error as exc:
        raise PgSinkError(f"cannot create {table.qualified}: {first_line(exc)}") from None


def ensure_exists(conn: psycopg.Connection[Any], table: Table) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (table.ident().as_string(conn),)).fetchone()
    if row is None or row[0] is None:
        raise PgSinkError(f"table {table.qualified} does not exist: run `keel pgsink init` first")


# Measured (bench/pgsink.py, batches of 500): COPY into a temporary table then one
# INSERT ... SELECT wrote 3x the rows/s of one INSERT ... SELECT FROM unnest(arrays), whose
# array parameters psycopg builds slowly, and beat executemany's pipelined INSERTs by ~15%.
LOAD_TABLE = "pgsink_load"
_LOAD_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {LOAD_TABLE} (event_id uuid, type text, user_id text,"
    ' occ bigint, rec bigint, source text, topic text, partition int, "offset" bigint,'
    " event jsonb) ON COMMIT DELETE ROWS"
)
COPY_LOAD = f"COPY {LOAD_TABLE} FROM STDIN"


def insert_from_load(table: Table) -> sql.Composed:
    """Move the loaded batch into the table; duplicates dropped by the key. Timestamps
    travel as integer microseconds and are converted exactly in SQL."""
    return sql.SQL(
        "INSERT INTO {} (event_id, type, user_id, occurred_at, received_at, source, topic,"
        ' partition, "offset", event)'
        " SELECT event_id, type, user_id,"
        " timestamptz 'epoch' + occ * interval '1 microsecond',"
        " timestamptz 'epoch' + rec * interval '1 microsecond',"
        ' source, topic, partition, "offset", event FROM '
        + LOAD_TABLE
        + " ON CONFLICT (event_id) DO NOTHING"
    ).format(table.ident())


def prepare_load(conn: psycopg.Connection[Any]) -> None:
    """The per-connection temporary table batches are copied into."""
    conn.execute(_LOAD_DDL)


def write_rows(conn: psycopg.Connection[Any], insert: sql.Composed, rows: list[Row]) -> int:
    """COPY the rows in, insert them, commit: the number of rows new to the table."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(COPY_LOAD) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(insert)
        return max(cur.rowcount, 0)


@dataclass(frozen=True)
class SinkStatus:
    table: str
    rows: int
    newest_occurred_at: datetime | None
    group: str
    lag: int | None  # None: the group has committed nothing and has no members

    def as_dict(self) -> dict[str, Any]:
        newest = self.newest_occurred_at
        return {
            "table": self.table,
            "rows": self.rows,
            "newest_occurred_at": newest.isoformat() if newest else None,
            "group": self.group,
            "lag": self.lag,
        }


def table_figures(conn: psycopg.Connection[Any], table: Table) -> tuple[int, datetime | None]:
    ensure_exists(conn, table)
    row = conn.execute(
        sql.SQL("SELECT count(*), max(occurred_at) FROM {}").format(table.ident())
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]
