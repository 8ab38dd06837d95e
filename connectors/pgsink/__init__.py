"""The PostgreSQL sink: Keel events from Kafka, one row per event_id in a table.

A package split at the pure/I-O seam: `rows` (pure), `table` (PostgreSQL), `sink` (the
runtime's BatchingSink).

Responsible for:
- the table (`create_table`, idempotent): the envelope as columns (event_id the primary
  key), where the record was read (topic, partition, offset) and the whole event as jsonb,
  with indexes on type, user_id and occurred_at;
- the row of an event (`event_row`, pure): decoded values made JSON-friendly (decimals as
  strings, bytes as base64, timestamps as integer microseconds, as the webhook sink sends
  them) and checked, so a record PostgreSQL would refuse is dead-lettered, not retried;
- the sink (`PgSink`), a `keel.runtime.BatchingSink`: the runtime's loop reads the
  events topics as one consumer group (read_committed, manual commits), decodes through
  the registry and batches (N events or T ms); the sink filters by type and writes a batch
  with COPY into a temporary table and one `INSERT ... SELECT ... ON CONFLICT (event_id) DO
  NOTHING`; the transaction commits, THEN the runtime commits the offsets.

Each event_id lands exactly once: a sink that dies between the database commit and the
offset commit reads the batch again and the primary key drops the rows it re-writes; what
was committed to Kafka is in the table. A record that is not a Keel event goes to the
dead-letter topic (keel.deadletters' headers, so `keel dlq` reads and replays it), acked
before the offsets move past it; so does a row PostgreSQL refuses for its data (a
constraint added to the table: the batch is then written row by row). While PostgreSQL is
down the sink pauses its partitions, keeps its place in the group, and retries with
backoff: memory holds one batch at most.
"""

from keel.connectors.pgsink.rows import (
    PgSinkError,
    Row,
    Unwritable,
    event_json,
    event_row,
    parse_topics,
    parse_types,
    wanted,
)
from keel.connectors.pgsink.sink import REASON_REJECTED, PgSink, SinkMetrics, health_server
from keel.connectors.pgsink.table import (
    SinkStatus,
    Table,
    connect,
    create_table,
    ensure_exists,
    insert_from_load,
    pgsink_dsn,
    prepare_load,
    table_figures,
    write_rows,
)
from keel.runtime import Batch

__all__ = [
    "REASON_REJECTED",
    "Batch",
    "PgSink",
    "PgSinkError",
    "Row",
    "SinkMetrics",
    "SinkStatus",
    "Table",
    "Unwritable",
    "connect",
    "create_table",
    "ensure_exists",
    "event_json",
    "event_row",
    "health_server",
    "insert_from_load",
    "parse_topics",
    "parse_types",
    "pgsink_dsn",
    "prepare_load",
    "table_figures",
    "wanted",
    "write_rows",
]
