"""Keel's settings: the one place that reads the environment (`KEEL_*`).

The same names are used by docker-compose, Kubernetes manifests and the local stack.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".keel"


class KeelSettings(BaseSettings):
    """Every setting Keel reads, with its default for the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="KEEL_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    # Kafka connection
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers (SASL_SSL for managed Kafka)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; SCRAM-SHA-512 when a username is set and this is not."
    )
    sasl_username: str | None = Field(None, description="This component's Kafka principal.")
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        None, description="A file holding the SASL password (instead of KEEL_SASL_PASSWORD)."
    )
    ssl_ca_location: Path | None = Field(
        None, description="PEM file of the CA(s) the brokers' certificates are checked "
        "against; default: the system's trust store.",
    )  # fmt: skip
    client_id: str = "keel"
    # Durability of every topic Keel creates (keel.kafka.ensure_topics, the one place):
    # unset, the cluster's own defaults apply, which on a real cluster are its operator's.
    replication_factor: int | None = Field(
        None,
        ge=1,
        # The old name (stream workers only, once defaulting to 1) still counts.
        validation_alias=AliasChoices(
            "replication_factor", "KEEL_REPLICATION_FACTOR", "KEEL_STREAMS_REPLICATION_FACTOR"
        ),
        description="Replicas of each topic Keel creates; unset: default.replication.factor.",
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of each topic Keel creates; unset: the brokers'.",
    )

    # Schema registry (Keel's own by default; any Confluent-compatible one works)
    schema_registry_url: str = "http://127.0.0.1:8081"
    registry_topic: str = Field(
        "_schemas", description="Compacted topic holding the registry's state."
    )
    registry_port: int = Field(8081, description="Port `keel registry` listens on.")
    schema_registry_user_info: SecretStr | None = Field(
        None, description="USER:PASSWORD Keel's clients send to the registry (HTTP basic auth, "
        "Confluent's basic.auth.user.info).",
    )  # fmt: skip
    registry_users_file: Path | None = Field(
        None, description="Users `keel registry` accepts (readers read, writers also register "
        "and delete); unset: it answers anyone.",
    )  # fmt: skip

    # Stores used by later components
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_dsn: SecretStr = SecretStr("postgresql://keel:keel@127.0.0.1:5432/keel")

    # Local stack
    home: Path = Field(DEFAULT_HOME, description="Where the local stack keeps jars, data, logs.")
    kafka_version: str = "4.4.0"
    broker_port: int = 9092
    broker_heap: str = "512m"
    maven_settings: Path | None = Field(
        None, description="A Maven settings.xml for fetching Kafka's jars (e.g. a company mirror)."
    )

    # Job workers (consumers/)
    jobs_retry_ladder: str = Field(
        "10s,1m,10m", description="Delays before each retry of a failed job (s, m, h units)."
    )
    jobs_retry_jitter: float = Field(0.2, ge=0, le=1, description="Random +/- share of a delay.")
    jobs_concurrency: int = Field(4, ge=1, description="Jobs run at once per job type.")
    jobs_max_in_flight: int = Field(1000, ge=1, description="Jobs polled but not committed.")
    jobs_commit_interval_ms: int = Field(500, ge=0, description="How often offsets are committed.")
    jobs_shutdown_timeout_s: float = Field(20.0, ge=0, description="Grace for in-flight jobs.")
    jobs_session_timeout_ms: int = Field(
        10000, ge=1000, description="How soon a dead worker's jobs move to the others."
    )
    jobs_idempotency_store: Literal["redis", "postgres"] = "redis"
    jobs_topic_prefix: str = Field("", description="Prefix of job topics and groups (tests).")
    jobs_done_ttl_days: int = Field(
        30, ge=1, description="How long done keys are kept (Redis TTL; PostgreSQL rows are purged)."
    )
    jobs_http_port: int = Field(8095, description="Worker /healthz, /readyz, /metrics port.")
    jobs_report_dir: Path | None = Field(
        None, description="Report store; default KEEL_HOME/reports."
    )
    jobs_views_url: str = Field(
        "http://127.0.0.1:8083", description="Streams query API the reports read views from."
    )
    jobs_outbox_dir: Path | None = Field(
        None, description="Where the local SMTP server keeps mail; default KEEL_HOME/outbox."
    )
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    smtp_from: str = "Keel <no-reply@keel.localhost>"

    # Stream processors (streams/)
    streams_app_id: str = Field("keel-streams", description="Faust app id = the consumer group.")
    streams_source_topic: str = Field("events", description="The topic of user-action events.")
    streams_source_partitions: int = Field(
        6, ge=1, description="Partitions when the worker creates it."
    )
    streams_data_dir: Path | None = Field(
        None, description="RocksDB tables; default KEEL_HOME/streams."
    )
    streams_web_host: str = Field(
        "127.0.0.1", description="Host the query API advertises (auto: hostname)."
    )
    streams_web_port: int = Field(8083, description="Query API, /healthz, /readyz, /metrics port.")
    streams_workers: int = Field(1, ge=0, description="Stream workers the local stack runs.")
    streams_standby_replicas: int = Field(1, ge=0, description="Standby copies of each table.")
    streams_shutdown_timeout_s: float = Field(
        20.0, gt=0, description="How long a stopping worker may take before it exits anyway."
    )
    streams_dedup_window_s: int = Field(
        86400, ge=1, description="How long an event_id is remembered."
    )
    streams_batch_size: int = Field(5000, ge=1, description="Events taken per batch.")
    streams_batch_within_s: float = Field(
        0.1,
        gt=0,
        description="Longest wait to fill a batch in Faust's test context (a worker hands "
        "over each fetched run at once).",
    )
    streams_dlq_topic: str = Field("events.dlq", description="Where poison messages go.")
    streams_jobs_topic_prefix: str = Field("", description="Prefix of the job topics (tests).")
    streams_window_retention_h: int = Field(48, ge=1, description="Hourly windows kept.")
    streams_cache_enabled: bool = Field(True, description="Write views to Redis.")
    streams_cache_prefix: str = Field("keel:", description="Prefix of the Redis keys written.")
    streams_cache_ttl_s: int = Field(86400, ge=1, description="TTL of the Redis view hashes.")
    streams_processors: str = Field("", description="Comma-separated processors to run (all).")
    streams_session_timeout_s: float = Field(
        10.0, gt=0, description="How soon a dead worker's partitions move to the others."
    )
    views_require_key: bool = Field(
        False, description="The views API answers only requests with an API key of scope views."
    )
    views_api_key: SecretStr | None = Field(
        None, description="API key (scope views) Keel's clients send to the views API."
    )
    streams_stall_timeout_s: float = Field(
        120.0,
        ge=0,
        description="A partition with messages waiting and no progress this long fails "
        "/healthz (0: never).",
    )

    # Ingestion (producers/): the HTTP events API and the producer SDK
    ingest_host: str = Field("127.0.0.1", description="Address `keel ingest` binds.")
    ingest_port: int = Field(8090, description="Port `keel ingest` listens on.")
    ingest_workers: int = Field(0, ge=0, description="Worker processes; 0: one per core.")
    ingest_replica_ports: str = Field(
        "8091,8092", description="Ports of the ingest replicas the local stack runs."
    )
    ingest_lb_port: int = Field(8080, description="Port of nginx in front of the replicas.")
    ingest_lb_tls_port: int = Field(
        8443, ge=0, description="HTTPS port of nginx on the secured local stack, its certificate "
        "from the local CA (0: none).",
    )  # fmt: skip
    ingest_url: str = Field("http://127.0.0.1:8080", description="Events API `keel demo` calls.")
    ingest_keys_file: Path | None = Field(
        None, description="Hashed API keys (JSON); default KEEL_HOME/api-keys.json."
    )
    ingest_api_key: SecretStr | None = Field(None, description="Key `keel demo` sends.")
    ingest_max_body_bytes: int = Field(1_048_576, ge=1, description="Largest body (413).")
    ingest_max_batch_events: int = Field(500, ge=1, description="Most events in a batch (413).")
    ingest_max_event_bytes: int = Field(65_536, ge=1, description="Largest single event (413).")
    ingest_rate_limit: float = Field(
        5000.0, gt=0, description="Events/s per API key across the workers (429)."
    )
    ingest_rate_burst: int = Field(10000, ge=1, description="Events a key may send at once.")
    ingest_delivery_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait for the broker's ack before 503."
    )
    ingest_queue_max_messages: int = Field(
        100_000, ge=1, description="Producer queue bound; beyond it 503."
    )
    ingest_linger_ms: int = Field(
        1, ge=0, description="Producer linger for ingestion (each answer waits for its ack)."
    )
    ingest_topic_prefix: str = Field("", description="Prefix of the topics produced to (tests).")
    ingest_trust_forwarded: bool = Field(
        False, description="Take the client ip from X-Forwarded-For (behind nginx)."
    )

    # Outbox source (connectors/outbox.py)
    outbox_dsn: SecretStr | None = Field(
        None, description="PostgreSQL holding the outbox table; default KEEL_POSTGRES_DSN."
    )
    outbox_table: str = Field(
        "keel_outbox",
        pattern=r"^([a-z_][a-z0-9_]{0,47}\.)?[a-z_][a-z0-9_]{0,47}$",
        description="The outbox table, optionally schema-qualified (lower-case identifiers).",
    )
    outbox_source: str = Field(
        "outbox", min_length=1, description="The `source` of the events the relay publishes."
    )
    outbox_batch_size: int = Field(2000, ge=1, le=10_000, description="Rows claimed at once.")
    outbox_poll_interval_s: float = Field(
        5.0, gt=0, description="Fallback poll when no NOTIFY arrives (missed or disabled)."
    )
    outbox_delivery_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the broker's acks of a batch before a retry."
    )
    outbox_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest pause between retries while Kafka or PostgreSQL is down."
    )
    outbox_retention_h: float = Field(
        168.0,
        ge=0,
        description="Published rows older than this are deleted (0: deleted when published).",
    )
    outbox_purge_interval_s: float = Field(
        600.0, gt=0, description="How often the relay deletes expired published rows."
    )
    outbox_progress_interval_s: float = Field(
        10.0, gt=0, description="How often the relay logs rows published and rejected."
    )
    outbox_http_port: int = Field(
        8096, ge=0, description="Relay /healthz, /readyz, /metrics port (0: none)."
    )

    # Webhook sink (connectors/webhooks/)
    webhooks_subscriptions: Path | None = Field(
        None, description="Subscriptions file (JSON or TOML); default KEEL_HOME/webhooks.toml."
    )
    webhooks_topics: str = Field("events", description="Comma-separated topics the sink reads.")
    webhooks_group: str = Field("keel-webhooks", description="The sink's consumer group.")
    webhooks_dlq_prefix: str = Field(
        "webhooks.dlq.", description="Dead-letter topic of a subscriber: this prefix + its name."
    )
    webhooks_timeout_s: float = Field(10.0, gt=0, description="Longest wait for one answer.")
    webhooks_max_attempts: int = Field(
        10, ge=1, description="Attempts per event and subscriber before the dead letter."
    )
    webhooks_max_age_s: float = Field(
        600.0, gt=0, description="Longest time an event is retried before the dead letter."
    )
    webhooks_backoff_initial_s: float = Field(0.5, gt=0, description="First retry delay.")
    webhooks_backoff_max_s: float = Field(60.0, gt=0, description="Longest retry delay.")
    webhooks_concurrency: int = Field(
        8, ge=1, description="Requests in flight per subscriber (at most one per partition)."
    )
    webhooks_max_pending: int = Field(
        1000, ge=1, description="Events read ahead per partition; beyond it the partition waits."
    )
    webhooks_commit_interval_ms: int = Field(1000, ge=0, description="How often offsets commit.")
    webhooks_session_timeout_ms: int = Field(
        10000, ge=1000, description="How soon a dead sink's partitions move to the others."
    )
    webhooks_http_port: int = Field(
        8097, ge=0, description="Sink /healthz, /readyz, /metrics port (0: none)."
    )
    webhooks_progress_interval_s: float = Field(
        30.0, gt=0, description="How often `keel webhooks run` logs its progress."
    )

    # PostgreSQL sink (connectors/pgsink/)
    pgsink_dsn: SecretStr | None = Field(
        None, description="PostgreSQL the sink writes to; default KEEL_POSTGRES_DSN."
    )
    pgsink_table: str = Field(
        "keel_events",
        pattern=r"^([a-z_][a-z0-9_]{0,47}\.)?[a-z_][a-z0-9_]{0,47}$",
        description="The events table, optionally schema-qualified (lower-case identifiers).",
    )
    pgsink_topics: str = Field("events", description="Comma-separated topics the sink reads.")
    pgsink_group: str = Field("keel-pgsink", description="The sink's consumer group.")
    pgsink_types: str = Field(
        "", description="Comma-separated event types (shell patterns) to keep; empty: all."
    )
    pgsink_batch_size: int = Field(
        500, ge=1, le=10_000, description="Events written in one INSERT and transaction."
    )
    pgsink_batch_ms: int = Field(
        500, ge=0, description="Longest wait to fill a batch before writing it."
    )
    pgsink_dlq_topic: str = Field(
        "pgsink.dlq",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="Dead-letter topic of records that are not Keel events.",
    )
    pgsink_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest pause between retries while PostgreSQL is down."
    )
    pgsink_session_timeout_ms: int = Field(
        10000, ge=1000, description="How soon a dead sink's partitions move to the others."
    )
    pgsink_progress_interval_s: float = Field(
        30.0, gt=0, description="How often `keel pgsink run` logs its progress."
    )
    pgsink_http_port: int = Field(
        8098, ge=0, description="Sink /healthz, /readyz, /metrics port (0: none)."
    )

    # Archive sink (connectors/archive/)
    archive_root: Path | None = Field(
        None, description="Where archive files are written; default KEEL_HOME/archive."
    )
    archive_topics: str = Field("events", description="Comma-separated topics the sink reads.")
    archive_group: str = Field("keel-archive", description="The sink's consumer group.")
    archive_roll_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="A file is closed past this many compressed bytes."
    )
    archive_roll_records: int = Field(
        100_000, ge=1, description="A file is closed after this many records."
    )
    archive_roll_age_s: float = Field(
        300.0, gt=0, description="A file is closed this long after its first record."
    )
    archive_session_timeout_ms: int = Field(
        10000, ge=1000, description="How soon a dead sink's partitions move to the others."
    )
    archive_http_port: int = Field(
        8099, ge=0, description="Sink /healthz, /readyz, /metrics port (0: none)."
    )
    archive_progress_interval_s: float = Field(
        30.0, gt=0, description="How often `keel archive run` logs its progress."
    )

    # Monitoring: the lag exporter (`keel lag --serve`) and the local stack's Prometheus
    lag_exporter_port: int = Field(
        9308, ge=1, description="Port the lag exporter serves /metrics, /healthz, /readyz on."
    )
    lag_exporter_interval_s: float = Field(
        15.0, gt=0, description="How often the lag exporter reads every group's lag."
    )
    prometheus_port: int = Field(
        9090, ge=0, description="Port of the local stack's Prometheus (0: none)."
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration shared by every Keel client (security from
        `keel.kafka.security_config`, the one place both client stacks take it from)."""
        from keel.kafka import security_config  # keel.kafka imports this module

        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            **security_config(self),
        }
        config.update(overrides)
        return config


@lru_cache(maxsize=1)
def get_settings() -> KeelSettings:
    """The process-wide settings, read once from the environment."""
    return KeelSettings()
