"""Debezium's PostgreSQL connector with its Outbox Event Router, on the Kafka Connect runtime
in Kafka's own libs: the tool a team would pick instead of Keel's outbox relay, run by
bench.outbox side by side with it.

The connector's jars come from Maven Central through `bench/debezium-pom.xml` with the same
fetcher as Kafka's (`keel.local.kafka_dist.maven_jars`), cached under KEEL_HOME/debezium;
Connect runs standalone (`ConnectStandalone`, offsets in a file) against the bench's broker.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from keel.connectors.outbox import OutboxTable
from keel.local import kafka_dist
from keel.local.ports import free_port
from keel.local.process import dying_with_parent

VERSION = "3.6.1.Final"
PLUGIN = "debezium-connector-postgres"
POM = Path(__file__).with_name("debezium-pom.xml")
CONNECT_MAIN = "org.apache.kafka.connect.cli.ConnectStandalone"
# Debezium's own defaults (CommonConnectorConfig in 3.6.1), left as they are and named here
# so the results can say which settings Debezium ran with.
DEFAULTS = {"max.batch.size": 2048, "max.queue.size": 8192, "poll.interval.ms": 500}


class DebeziumError(RuntimeError):
    """Connect or the connector did not come up (the message names the log to read)."""


def plugin_path(home: Path, maven_settings: Path | None = None, progress: Any = print) -> Path:
    """The folder to give Connect as `plugin.path`: it holds one plugin, the connector's jars,
    fetched on first use (a second run fetches nothing)."""
    jars = kafka_dist.maven_jars(
        POM,
        home / "debezium" / VERSION / "plugins" / PLUGIN,
        what=f"Debezium {PLUGIN} {VERSION}",
        must_have=f"{PLUGIN}-{VERSION}.jar",
        properties={"debezium.version": VERSION},
        progress=progress,
        maven_settings=maven_settings,
    )
    return jars.parent


@dataclass(frozen=True)
class Database:
    """Where the connector reads: the parts of the outbox's DSN."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def of(cls, dsn: str) -> Database:
        url = urlparse(dsn)
        if url.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a postgresql:// DSN: {url.scheme}://...")
        return cls(
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username or "postgres"),
            password=unquote(url.password or ""),
            dbname=(url.path or "/").lstrip("/") or "postgres",
        )


def connector_config(
    name: str,
    db: Database,
    table: OutboxTable,
    topic: str,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The connector on Keel's outbox table as it is, with the Outbox Event Router mapping
    its columns: `event` (the jsonb the service wrote) is the record's value, `id` its key
    and its `id` header; every record goes to `topic`.

    Keel's table has no aggregate-type or aggregate-id column (the event's user_id, Keel's
    key, is inside the JSON), so the router is told which columns to use instead of the
    table being changed: the key is the row id, and `route.by.field` names the `event`
    column only because the router reads a text column there; the fixed replacement sends
    every row to `topic`. Streaming starts from the slot (no snapshot), over pgoutput with
    a publication of this table alone; everything else is Debezium's default."""
    slot = name.replace("-", "_")
    config = {
        "name": name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": db.host,
        "database.port": str(db.port),
        "database.user": db.user,
        "database.password": db.password,
        "database.dbname": db.dbname,
        "topic.prefix": name,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "slot.drop.on.stop": "true",
        "publication.name": slot,
        "publication.autocreate.mode": "filtered",
        "table.include.list": f"{table.schema or 'public'}.{table.name}",
        "snapshot.mode": "no_data",
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
        "transforms.outbox.table.field.event.id": "id",
        "transforms.outbox.table.field.event.key": "id",
        "transforms.outbox.table.field.event.payload": "event",
        "transforms.outbox.route.by.field": "event",
        "transforms.outbox.route.topic.regex": "(?s).*",
        "transforms.outbox.route.topic.replacement": topic,
    }
    config.update({key: str(value) for key, value in (overrides or {}).items()})
    return config


def worker_config(bootstrap: str, plugins: Path, offsets: Path, rest_port: int) -> dict[str, str]:
    """A standalone Connect worker on the bench's broker; records as Debezium hands them
    over (the event's JSON text, the row id as text), no schemas around them."""
    return {
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "offset.storage.file.filename": str(offsets),
        "plugin.path": str(plugins),
        "plugin.discovery": "only_scan",
        "listeners": f"http://127.0.0.1:{rest_port}",
    }


def properties(config: Mapping[str, str]) -> str:
    """Java `.properties` text: keys and values escaped so each reads back as written."""

    def escape(text: str, key: bool) -> str:
        text = text.replace("\\", "\\\\").replace("\n", "\\n")
        if key:
            for ch in " =:#!":
                text = text.replace(ch, "\\" + ch)
        elif text.startswith(" "):
            text = "\\" + text
        return text

    return "".join(f"{escape(k, True)}={escape(v, False)}\n" for k, v in config.items())


class ConnectWorker:
    """One `ConnectStandalone` process running one connector; stopped by `stop()`."""

    def __init__(self, workdir: Path, libs: Path, plugins: Path, bootstrap: str) -> None:
        self.workdir = workdir
        self.libs = libs
        self.plugins = plugins
        self.bootstrap = bootstrap
        self.rest_port = free_port()
        self.log_file = workdir / "connect.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.name = ""

    def start(
        self,
        connector: Mapping[str, str],
        worker: Mapping[str, str] | None = None,
        heap: str = "512m",
    ) -> None:
        """Start Connect with `connector`; `worker` settings go over `worker_config`'s."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = connector["name"]
        worker_file = self.workdir / "worker.properties"
        connector_file = self.workdir / "connector.properties"
        worker_file.write_text(
            properties(
                {
                    **worker_config(
                        self.bootstrap, self.plugins, self.workdir / "offsets", self.rest_port
                    ),
                    **(worker or {}),
                }
            )
        )
        connector_file.write_text(properties(connector))
        argv = [
            kafka_dist.java_binary(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={kafka_dist.log4j_config()}",
            "-cp",
            kafka_dist.classpath(self.libs),
            CONNECT_MAIN,
            str(worker_file),
            str(connector_file),
        ]
        with self.log_file.open("wb") as out:
            # Dies with the benchmark, even a killed one (no JVM or slot reader left behind).
            self.proc = subprocess.Popen(dying_with_parent(argv), stdout=out, stderr=out)

    def status(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except (OSError, ValueError):  # not listening yet, 404 before the connector exists
            return None

    def wait_running(self, timeout: float = 120.0) -> None:
        """Until the connector and its task report RUNNING; fail early when the JVM exits
        or the task fails (with Connect's own trace's first line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DebeziumError(
                    f"Kafka Connect exited with status {self.proc.returncode} (log: {self.log_file})"
                )
            status = self.status()
            tasks = (status or {}).get("tasks") or []
            for task in tasks:
                if task.get("state") == "FAILED":
                    trace = str(task.get("trace", "")).splitlines()
                    raise DebeziumError(
                        f"the Debezium task failed: {trace[0] if trace else '?'} (log: {self.log_file})"
                    )
            if (
                status
                and status.get("connector", {}).get("state") == "RUNNING"
                and tasks
                and all(t.get("state") == "RUNNING" for t in tasks)
            ):
                return
            time.sleep(0.2)
        raise DebeziumError(
            f"the Debezium connector was not running after {timeout:.0f}s (log: {self.log_file})"
        )

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # a clean stop: the task closes and drops its slot
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
