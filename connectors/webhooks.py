"""The webhook sink: Keel events read from Kafka, POSTed as signed JSON to subscribers' URLs.

Responsible for:
- subscriptions: a JSON or TOML file validated with pydantic (`load_subscriptions`); a bad
  file is one `SubscriptionError` naming the subscription and the field;
- signing: `Keel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the
  scheme Stripe uses (`signature_header`, and `verify` for receivers);
- the retry policy, pure: which answers are retried (`classify_status`, `classify_error`),
  after how long (`RetryPolicy`: exponential backoff with jitter, Retry-After honoured, up
  to max attempts and max age);
- the sink (`WebhookSink`): one consumer group on the events topics, each event decoded
  from Keel's Avro through the registry and delivered to every subscriber that wants it.

Delivery is at least once, in order per subscriber and partition: each (subscriber,
partition) pair is a lane that sends one event at a time, and a subscriber has at most
`concurrency` requests in flight across its lanes. An event is finished for a subscriber
when it answered 2xx or when the event was written (and acknowledged) to the subscriber's
dead-letter topic; a partition's offset is committed only past events finished for every
subscriber. A crash re-sends what was not committed: receivers dedup by `Keel-Event-Id`.

A slow or failing subscriber holds back only its own lanes while the others go on, up to
`max_pending` events read ahead per partition; then the partition waits for it. The wait
is bounded: each attempt times out, and an event is given up (dead-lettered) after
`max_attempts` attempts or `max_age_s` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import email.utils
import enum
import fnmatch
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import tomllib
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
)

from keel.deadletters import H_REPLAYED_FROM, Failure, Origin, header_map, letter_headers
from keel.errors import KeelError
from keel.health import Checks, beating, check, routes
from keel.kafka import (
    TopicSpec,
    ensure_topics,
    has_record,
    make_admin,
    make_consumer,
    make_producer,
)
from keel.metrics import ConsumerMetrics
from keel.settings import KeelSettings
from schemas.catalog import load_catalog
from schemas.errors import DecodeError, RegistryError
from schemas.registry.client import RegistryClient
from schemas.serde import AvroSerde

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Keel-Signature"
DEFAULT_TOLERANCE_S = 300  # how old a signed timestamp a receiver should accept
USER_AGENT = "keel-webhooks/1"
# Extra dead-letter headers (beside keel.deadletters' contract): who gave up, how often.
H_SUBSCRIBER = "keel.webhooks.subscriber"
H_ATTEMPTS = "keel.webhooks.attempts"
H_EVENT_ID = "keel.event_id"
# Dead-letter reasons.
REASON_PERMANENT = "permanent"  # a 4xx (not 408/429), a redirect, a bad URL
REASON_EXHAUSTED = "exhausted"  # max attempts reached
REASON_EXPIRED = "expired"  # max age reached
REASON_UNDECODABLE = "undecodable"  # not Keel's Avro: nobody can tell who wanted it
# Delivery ids are UUIDv5 of subscriber and record: the same across retries and restarts.
_DELIVERY_NS = uuid.UUID("5b0d8a53-8a4c-4a43-9d1e-2f4f0b6c2a11")
_ANSWER_SNIPPET = 300  # bytes of a failed answer kept in logs and dead letters


class WebhookError(KeelError):
    """Root of the webhook sink's errors."""


class DeliveryRefused(WebhookError):
    """A subscriber did not take an event: its HTTP answer stands for this error class in a
    dead letter's `keel.error.class`."""


class SubscriptionError(WebhookError):
    """The subscriptions file is missing, unreadable or invalid."""


class SignatureError(WebhookError):
    """A `Keel-Signature` header does not verify."""


# -- signing ------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Keel-Signature` value: `t=<unix seconds>,v1=<hex>`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """What a receiver does: check a `Keel-Signature` header against the raw body; return
    its timestamp. Several `v1=` values are accepted (one per secret while rotating).
    The tolerance refuses a replay of an old request; 0 turns that check off."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(f"timestamp t={value!r} is not an integer") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("no t=<timestamp> in the signature header")
    if not candidates:
        raise SignatureError("no v1=<signature> in the signature header")
    current = time.time() if now is None else now
    if tolerance_s and abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance_s:g}s from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no v1 signature matches the body under this secret")
    return timestamp


# -- retry policy (pure) ------------------------------------------------------------------


class _Interrupted(Exception):
    """Decoding gave up waiting for the registry because the sink is stopping."""


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str
    retry_after: float | None = None  # seconds the receiver asked us to wait
    status: int | None = None
    error_class: str = f"{__name__}.DeliveryRefused"  # an exception's, when one was raised


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_status(
    status: int, retry_after: str | None = None, snippet: str = "", now: float | None = None
) -> Outcome:
    """2xx is success; 408, 429 and 5xx are retried; any other answer (4xx, 3xx: a redirect
    would carry a signed body elsewhere) is permanent."""
    detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return Outcome(Verdict.SUCCESS, detail, status=status)
    if status in (408, 429) or status >= 500:
        return Outcome(Verdict.RETRY, detail, parse_retry_after(retry_after, now), status)
    if 100 <= status < 200:  # a non-final answer surfacing means a broken peer: try again
        return Outcome(Verdict.RETRY, detail, status=status)
    return Outcome(Verdict.PERMANENT, detail, status=status)


def classify_error(exc: BaseException) -> Outcome:
    """Timeouts and connection errors are retried; a URL aiohttp cannot use is permanent."""
    name, kind = type(exc).__name__, Failure.of(exc).error_class
    if isinstance(exc, aiohttp.InvalidURL):
        return Outcome(Verdict.PERMANENT, f"invalid URL: {exc}", error_class=kind)
    if isinstance(exc, TimeoutError):
        return Outcome(Verdict.RETRY, f"timeout ({name})", error_class=kind)
    return Outcome(Verdict.RETRY, f"{name}: {exc}", error_class=kind)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and age.

    The n-th retry waits `min(max_s, initial_s * 2**(n-1))`, of which a `jitter` share is
    drawn at random (so subscribers recovering together are not hit in lockstep), and at
    least what the receiver's Retry-After asked for."""

    max_attempts: int = 10
    max_age_s: float = 600.0
    initial_s: float = 0.5
    max_s: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_age_s <= 0 or self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError("max_age_s, initial_s and max_s must be > 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt must be >= 1")
        ceiling = min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 62))
        draw = (rng or random).random()
        return ceiling * (1 - self.jitter * draw)

    def next_retry(
        self,
        attempt: int,
        age_s: float,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> tuple[float | None, str]:
        """(seconds to wait, "") to try again, or (None, reason) to give up: `exhausted`
        when `attempt` was the last one, `expired` when the wait would pass the max age."""
        if attempt >= self.max_attempts:
            return None, REASON_EXHAUSTED
        delay = self.backoff(attempt, rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if age_s + delay > self.max_age_s:
            return None, REASON_EXPIRED
        return delay, ""


# -- subscriptions ------------------------------------------------------------------------

MIN_SECRET_LENGTH = 16  # a guessable key makes the signature worthless
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


class Subscription(BaseModel):
    """One subscriber: where to POST, which event types, the signing secret, and optional
    overrides of the KEEL_WEBHOOKS_* defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, description="Unique; names the dead-letter topic.")
    url: HttpUrl
    events: Literal["*"] | list[str] = Field(
        "*", description='"*" for all, or event types (shell patterns: "order.*").'
    )
    secret: SecretStr = Field(description="HMAC-SHA256 key, shared with the subscriber.")
    timeout_s: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1)
    max_age_s: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    dead_letter_topic: str | None = Field(None, pattern=_TOPIC)

    @field_validator("events")
    @classmethod
    def _known_types(cls, value: Literal["*"] | list[str]) -> Literal["*"] | list[str]:
        if value == "*":
            return value
        if not value:
            raise ValueError('must name at least one event type (or be "*" for all)')
        known = load_catalog().types()
        for pattern in value:
            if not fnmatch.filter(known, pattern):
                raise ValueError(
                    f"{pattern!r} matches no event type of the catalog ({', '.join(known)})"
                )
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    def wants(self, event_type: str) -> bool:
        if self.events == "*":
            return True
        return any(fnmatch.fnmatchcase(event_type, p) for p in self.events)


class SubscriptionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscriptions: list[Subscription] = Field(min_length=1)


def _describe(error: Mapping[str, Any], raw: Any) -> str:
    """One pydantic error as `subscription 'x' (#2) field 'url': <message>`."""
    loc = list(error.get("loc", ()))
    where = "file"
    if len(loc) >= 2 and loc[0] == "subscriptions" and isinstance(loc[1], int):
        index = loc[1]
        name = None
        items = raw.get("subscriptions") if isinstance(raw, dict) else None
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            name = items[index].get("name")
        where = f"subscription {name!r} (#{index + 1})" if name else f"subscription #{index + 1}"
        loc = loc[2:]
    elif loc and loc[0] == "subscriptions":
        loc = loc[1:] if len(loc) > 1 else []
        where = "subscriptions"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if loc:
        return f"{where} field '{'.'.join(str(x) for x in loc)}': {message}"
    return f"{where}: {message}"


def parse_subscriptions(raw: Any, source: str = "subscriptions") -> list[Subscription]:
    """Validate already-parsed data: `{"subscriptions": [...]}` or a bare list."""
    if isinstance(raw, list):
        raw = {"subscriptions": raw}
    if not isinstance(raw, dict):
        raise SubscriptionError(f"{source}: expected a 'subscriptions' list")
    try:
        subs = list(SubscriptionsFile.model_validate(raw).subscriptions)
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors()]
        raise SubscriptionError(f"{source}: {'; '.join(problems)}") from None
    first: dict[str, int] = {}
    for index, sub in enumerate(subs, 1):
        if sub.name in first:
            raise SubscriptionError(
                f"{source}: subscription {sub.name!r} (#{index}) field 'name': "
                f"already used by subscription #{first[sub.name]} (names must be unique)"
            )
        first[sub.name] = index
    return subs


def load_subscriptions(path: Path) -> list[Subscription]:
    """Read and validate a `.toml` (`[[subscriptions]]` tables) or `.json` file."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise SubscriptionError(f"{path}: a subscriptions file ends in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SubscriptionError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        raw: Any = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise SubscriptionError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    return parse_subscriptions(raw, str(path))


# -- event bodies -------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: money must not become a float
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def event_body(record: Mapping[str, Any]) -> bytes:
    """The JSON body POSTed: the event's fields as decoded (`uuid`s as strings,
    `timestamp-micros` as integer microseconds, decimals as strings, bytes as base64)."""
    return json.dumps(
        record, default=_json_default, separators=(",", ":"), ensure_ascii=False
    ).encode()


def delivery_id(subscriber: str, topic: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(_DELIVERY_NS, f"{subscriber}/{topic}/{partition}@{offset}"))


# -- the sink -----------------------------------------------------------------------------


@dataclass
class Target:
    """A subscription with its effective settings and its HTTP client."""

    sub: Subscription
    policy: RetryPolicy
    timeout_s: float
    concurrency: int
    dead_letter_topic: str
    secret: str = field(repr=False)
    semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.sub.name

    @classmethod
    def of(cls, sub: Subscription, settings: KeelSettings) -> Target:
        concurrency = sub.concurrency or settings.webhooks_concurrency
        return cls(
            sub=sub,
            policy=RetryPolicy(
                max_attempts=sub.max_attempts or settings.webhooks_max_attempts,
                max_age_s=sub.max_age_s or settings.webhooks_max_age_s,
                initial_s=settings.webhooks_backoff_initial_s,
                max_s=settings.webhooks_backoff_max_s,
            ),
            timeout_s=sub.timeout_s or settings.webhooks_timeout_s,
            concurrency=concurrency,
            dead_letter_topic=sub.dead_letter_topic or settings.webhooks_dlq_prefix + sub.name,
            secret=sub.secret.get_secret_value(),
            semaphore=asyncio.Semaphore(concurrency),
        )


@dataclass
class Record:
    """One consumed message, decoded (or with the reason it could not be)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    event_id: str = ""
    event_type: str = ""
    body: bytes = b""
    undecodable: Failure | None = None  # the decoding error, when there is one
    replayed_from: str = ""  # `keel dlq replay`'s <dlq topic>/<partition>@<offset>


class PartitionTrack:
    """The records of one assigned partition not committed yet, and how many subscribers
    each still waits for; the commit point is past the finished prefix."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.entries: deque[list[int]] = deque()  # [offset, subscribers left], offset order
        self.by_offset: dict[int, list[int]] = {}
        self.commit_at: int | None = None  # the offset to commit (next one to process)
        self.committed: int | None = None
        self.revoked = False
        self.paused = False
        self.lanes: dict[str, asyncio.Queue[Record]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, offset: int, waiting: int) -> None:
        entry = [offset, waiting]
        self.entries.append(entry)
        self.by_offset[offset] = entry
        self._advance()

    def finish(self, offset: int) -> None:
        entry = self.by_offset.get(offset)
        if entry is not None:
            entry[1] -= 1
            self._advance()

    def _advance(self) -> None:
        while self.entries and self.entries[0][1] <= 0:
            offset = self.entries.popleft()[0]
            del self.by_offset[offset]
            self.commit_at = offset + 1

    @property
    def pending(self) -> int:
        return len(self.entries)


class SinkMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.delivered = Counter(
            "keel_webhooks_delivered",
            "Events a subscriber answered 2xx.",
            ["subscriber"],
            registry=r,
        )
        self.attempts = Counter(
            "keel_webhooks_attempts",
            "POSTs made, by verdict (success, retry, permanent).",
            ["subscriber", "verdict"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "keel_webhooks_dead_lettered",
            "Events given up and written to the subscriber's dead-letter topic.",
            ["subscriber", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "keel_webhooks_latency_seconds",
            "From the event's Kafka timestamp to the subscriber's 2xx.",
            ["subscriber"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        # keel_consumer_*{component="webhooks"}: processed counts deliveries a subscriber
        # took, failures the attempts retried; the figures above break them down by subscriber.
        self.consumer = ConsumerMetrics("webhooks", r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _topics(settings: KeelSettings) -> list[str]:
    topics = [t.strip() for t in settings.webhooks_topics.split(",") if t.strip()]
    if not topics:
        raise WebhookError("KEEL_WEBHOOKS_TOPICS names no topic")
    return topics


class WebhookSink:
    """The sink (see the module docstring). `run()` until `stop()`; every Kafka call is made
    on one thread (`_kafka`), the HTTP deliveries on the asyncio loop."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        settings: KeelSettings,
        *,
        serde: AvroSerde | None = None,
        http_port: int | None = None,
        batch_size: int = 500,
    ) -> None:
        if not subscriptions:
            raise WebhookError("no subscriptions: nothing to deliver to")
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.topics = _topics(settings)
        self.serde = serde
        self.http_port = settings.webhooks_http_port if http_port is None else http_port
        self.batch_size = batch_size
        self.metrics = SinkMetrics()
        self.targets: list[Target] = []
        self.tracks: dict[tuple[str, int], PartitionTrack] = {}
        self._lock = threading.Lock()  # tracks are read by the rebalance callbacks too
        self._kafka = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webhooks-kafka")
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stopping = threading.Event()
        self._joined = threading.Event()
        self._last_loop = time.monotonic()
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self.counts = self.metrics.consumer  # what the progress log and /metrics report

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to finish (safe from a signal handler on the loop's thread)."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping.is_set():
            return
        self.targets = [Target.of(s, self.settings) for s in self.subscriptions]
        await self._kafka_call(self._prepare_kafka)
        for target in self.targets:
            target.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=target.timeout_s),
                connector=aiohttp.TCPConnector(limit=target.concurrency),
                headers={"User-Agent": USER_AGENT},
            )
        runner = await self._start_http()
        producer_thread = threading.Thread(
            target=self._serve_producer, name="webhooks-producer", daemon=True
        )
        producer_thread.start()
        log.info(
            "webhook sink reading %s as group %s for %d subscriber(s)",
            ",".join(self.topics),
            self.settings.webhooks_group,
            len(self.targets),
            extra={"subscribers": [t.name for t in self.targets]},
        )
        try:
            await self._consume_loop()
        finally:
            await self._shutdown()
            self._stopping.set()
            producer_thread.join(5)
            if runner is not None:
                await runner.cleanup()

    def _prepare_kafka(self) -> None:
        """Dead-letter topics exist before anything could need one; the consumer subscribes."""
        settings = self.settings
        admin = make_admin(settings)
        metadata = admin.list_topics(timeout=15)
        partitions = max(
            (len(metadata.topics[t].partitions) for t in self.topics if t in metadata.topics),
            default=1,
        )
        dlqs = [TopicSpec(t.dead_letter_topic, partitions) for t in self.targets]
        ensure_topics(admin, dlqs, settings=settings)
        if self.serde is None:
            self.serde = AvroSerde(RegistryClient(settings.schema_registry_url), load_catalog())
        self._producer = make_producer(settings, **{"linger.ms": 0})
        self._consumer = make_consumer(
            settings.webhooks_group,
            settings,
            # Decoding waits out a registry outage on the polling thread: leave room
            # before the group decides this member is stuck.
            **{
                "max.poll.interval.ms": 600_000,
                "session.timeout.ms": settings.webhooks_session_timeout_ms,
            },
        )
        self._consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    async def _kafka_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._kafka, fn, *args)

    def _serve_producer(self) -> None:
        while not self._stopping.is_set() or (self._producer and len(self._producer) > 0):
            if self._producer is not None:
                self._producer.poll(0.1)
            else:
                time.sleep(0.1)

    # -- rebalances (on the Kafka thread, inside consume) -------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self.tracks[(tp.topic, tp.partition)] = PartitionTrack(tp.topic, tp.partition)
            self.counts.assigned = len(self.tracks)
        self.counts.rebalances += 1
        self._joined.set()
        log.info(
            "assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "none"
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what is finished before another member takes the partitions over; the rest
        # it re-sends (at least once).
        offsets = self._release(partitions)
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # the group may have moved on already
                log.warning("commit on revoke failed: %s", exc)
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions)
        log.warning("lost %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _release(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        offsets = []
        released = []
        with self._lock:
            for tp in partitions:
                track = self.tracks.pop((tp.topic, tp.partition), None)
                if track is None:
                    continue
                track.revoked = True
                released.append(track)
                if track.commit_at is not None and track.commit_at != track.committed:
                    offsets.append(TopicPartition(track.topic, track.partition, track.commit_at))
            self.counts.assigned = len(self.tracks)
        self.counts.rebalances += 1
        if released and self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_lanes, released)
        return offsets

    @staticmethod
    def _cancel_lanes(tracks: list[PartitionTrack]) -> None:
        for track in tracks:
            for task in track.tasks:
                task.cancel()

    # -- consuming ------------------------------------------------------------------------
    def _poll(self) -> list[Record]:
        """A batch of records, decoded (on the Kafka thread: decoding may call the registry)."""
        assert self._consumer is not None and self.serde is not None
        messages = self._consumer.consume(self.batch_size, 0.2)
        records = []
        for msg in messages:
            if not has_record(msg):
                continue
            try:
                records.append(self._decode(msg))
            except _Interrupted:
                # Stopping while the registry is down: the rest of the batch is neither
                # delivered nor committed, so the next start reads it again.
                break
        return records

    def _decode(self, msg: Message) -> Record:
        assert self.serde is not None
        _kind, timestamp_ms = msg.timestamp()
        record = Record(
            msg.topic() or "",
            msg.partition() or 0,
            msg.offset() or 0,
            msg.key(),
            msg.value() or b"",
            timestamp_ms,
        )
        headers = msg.headers()
        if headers:  # rare: most events carry none
            record.replayed_from = header_map(headers).get(H_REPLAYED_FROM, "")
        delay = 0.5
        while True:
            try:
                event = self.serde.decode_plain(record.value)
                break
            except RegistryError as exc:
                if exc.retriable and self._stopping.is_set():
                    raise _Interrupted from None  # not undecodable: left for the next start
                if not exc.retriable:
                    record.undecodable = Failure.of(exc)
                    return record
                # The registry is down: nothing behind this record can be decoded either.
                log.warning("registry unavailable, retrying in %.1fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            except (DecodeError, ValueError) as exc:
                record.undecodable = Failure.of(exc)
                return record
        event_type = event.get("type")
        if not isinstance(event_type, str):
            record.undecodable = Failure(
                "the record has no string 'type' field: not a Keel event",
                f"{DecodeError.__module__}.{DecodeError.__qualname__}",
            )
            return record
        record.event_type = event_type
        record.event_id = str(event.get("event_id", ""))
        record.body = event_body(event)
        return record

    async def _consume_loop(self) -> None:
        interval = self.settings.webhooks_commit_interval_ms / 1000
        progress_every = self.settings.webhooks_progress_interval_s
        next_commit = time.monotonic() + interval
        next_progress = time.monotonic() + progress_every
        while not self._stop.is_set():
            self._last_loop = time.monotonic()
            records = await self._kafka_call(self._poll)
            for record in records:
                self._dispatch(record)
            await self._flow_control()
            now = time.monotonic()
            if now >= next_commit:
                await self._commit()
                next_commit = now + interval
            if now >= next_progress:
                self._log_progress()
                next_progress = now + progress_every

    def _dispatch(self, record: Record) -> None:
        with self._lock:
            track = self.tracks.get((record.topic, record.partition))
        if track is None or track.revoked:
            return  # revoked while this batch was in flight: its new owner reads it again
        self.counts.consumed += 1
        if record.undecodable:
            targets = self.targets  # nobody can tell who wanted it: every subscriber hears
        else:
            targets = [t for t in self.targets if t.sub.wants(record.event_type)]
        if record.replayed_from:
            # Replayed from a subscriber's dead letters: only that subscriber missed it.
            dlq = record.replayed_from.rsplit("/", 1)[0]
            owners = [t for t in self.targets if t.dead_letter_topic == dlq]
            if owners:
                targets = [t for t in targets if t in owners]
        with self._lock:
            track.add(record.offset, len(targets))
        for target in targets:
            lane = track.lanes.get(target.name)
            if lane is None:
                lane = track.lanes[target.name] = asyncio.Queue()
                track.tasks.append(asyncio.create_task(self._lane(target, track, lane)))
            lane.put_nowait(record)

    async def _flow_control(self) -> None:
        """Pause a partition whose read-ahead is full; resume it at half."""
        high = self.settings.webhooks_max_pending
        pause, resume = [], []
        with self._lock:
            tracks = list(self.tracks.values())
        for track in tracks:
            if not track.paused and track.pending >= high:
                track.paused = True
                pause.append(TopicPartition(track.topic, track.partition))
            elif track.paused and track.pending <= high // 2:
                track.paused = False
                resume.append(TopicPartition(track.topic, track.partition))
        self.counts.in_flight = sum(t.pending for t in tracks)
        self.counts.paused = any(t.paused for t in tracks)
        if pause and self._consumer is not None:
            await self._kafka_call(self._consumer.pause, pause)
            log.info("read-ahead full, waiting on %s", pause)
        if resume and self._consumer is not None:
            await self._kafka_call(self._consumer.resume, resume)

    async def _commit(self) -> None:
        with self._lock:
            due = [
                (track, track.commit_at)
                for track in self.tracks.values()
                if not track.revoked
                and track.commit_at is not None
                and track.commit_at != track.committed
            ]
        if not due or self._consumer is None:
            return
        offsets = [TopicPartition(t.topic, t.partition, at) for t, at in due]
        try:
            await self._kafka_call(self._commit_now, offsets)
        except Exception as exc:  # a rebalance under way: the next commit tries again
            log.warning("commit failed: %s", exc)
            return
        with self._lock:
            for track, at in due:
                track.committed = at
        self.counts.commits += 1

    def _commit_now(self, offsets: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._consumer.commit(offsets=offsets, asynchronous=False)

    def _log_progress(self) -> None:
        with self._lock:
            pending = sum(t.pending for t in self.tracks.values())
            partitions = len(self.tracks)
        c = self.counts
        log.info(
            "webhooks: %d read, %d delivered, %d retries, %d dead-lettered, %d pending",
            c.consumed,
            c.processed,
            c.failures,
            sum(c.dead_lettered.values()),
            pending,
            extra={**c.counts(), "pending": pending, "partitions": partitions},
        )

    # -- delivering -----------------------------------------------------------------------
    async def _lane(
        self, target: Target, track: PartitionTrack, lane: asyncio.Queue[Record]
    ) -> None:
        """One subscriber's events of one partition, one at a time, in offset order."""
        while not track.revoked:
            record = await lane.get()
            if track.revoked:
                return
            await self._deliver(target, record)
            with self._lock:
                if not track.revoked:
                    track.finish(record.offset)

    async def _deliver(self, target: Target, record: Record) -> None:
        """Until the subscriber took it, or it is in the dead-letter topic."""
        if record.undecodable:
            await self._dead_letter(target, record, REASON_UNDECODABLE, record.undecodable, 0)
            return
        started = time.monotonic()
        ident = delivery_id(target.name, record.topic, record.partition, record.offset)
        attempt = 0
        while True:
            attempt += 1
            async with target.semaphore:
                outcome = await self._attempt(target, record, attempt, ident)
            if outcome.verdict is Verdict.SUCCESS:
                self.counts.processed += 1
                ok_attempts, delivered, latency = self._success_metrics(target.name)
                ok_attempts.inc()
                delivered.inc()
                if record.timestamp_ms > 0:
                    latency.observe(max(0.0, time.time() - record.timestamp_ms / 1000))
                return
            self.metrics.attempts.labels(target.name, outcome.verdict.value).inc()
            if outcome.verdict is Verdict.PERMANENT:
                reason = REASON_PERMANENT
            else:
                age = time.monotonic() - started
                delay, reason = target.policy.next_retry(attempt, age, outcome.retry_after)
                if delay is not None:
                    self.counts.failures += 1
                    log.info(
                        "%s: attempt %d failed (%s), retrying in %.2fs",
                        target.name,
                        attempt,
                        outcome.detail,
                        delay,
                        extra={"event_id": record.event_id, "subscriber": target.name},
                    )
                    await asyncio.sleep(delay)  # the backoff itself
                    continue
            failure = Failure(outcome.detail, outcome.error_class)
            await self._dead_letter(target, record, reason, failure, attempt)
            return

    def _success_metrics(self, name: str) -> tuple[Any, Any, Any]:
        # The labelled children looked up once per subscriber: `labels()` takes a lock and
        # builds a key on every call, measurable at thousands of events a second.
        children = self._children.get(name)
        if children is None:
            m = self.metrics
            children = self._children[name] = (
                m.attempts.labels(name, Verdict.SUCCESS.value),
                m.delivered.labels(name),
                m.latency.labels(name),
            )
        return children

    async def _attempt(self, target: Target, record: Record, attempt: int, ident: str) -> Outcome:
        assert target.session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(target.secret, record.body),
            "Keel-Event-Id": record.event_id,
            "Keel-Event-Type": record.event_type,
            "Keel-Delivery-Id": ident,
            "Keel-Attempt": str(attempt),
        }
        try:
            async with target.session.post(
                str(target.sub.url), data=record.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    await response.read()  # drained: the connection goes back to the pool
                    return Outcome(Verdict.SUCCESS, f"HTTP {response.status}")
                snippet = (await response.content.read(_ANSWER_SNIPPET)).decode("utf-8", "replace")
                return classify_status(
                    response.status, response.headers.get("Retry-After"), snippet.strip()
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp and the OS raise many unrelated types
            return classify_error(exc)

    async def _dead_letter(
        self, target: Target, record: Record, reason: str, error: Failure, attempts: int
    ) -> None:
        """Write the record to the subscriber's dead-letter topic; return once the broker
        acknowledged it (retrying meanwhile: committing past it otherwise would lose it)."""
        origin = Origin(record.topic, record.partition, record.offset, record.timestamp_ms)
        extra = [
            (H_SUBSCRIBER, target.name),
            (H_ATTEMPTS, str(attempts)),
            (H_EVENT_ID, record.event_id),
        ]
        headers = letter_headers(reason, error, origin, extra)
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            done: asyncio.Future[KafkaError | None] = loop.create_future()

            def settle(result: KafkaError | None, done: asyncio.Future[Any] = done) -> None:
                if not done.done():
                    done.set_result(result)

            def delivered(err: KafkaError | None, _msg: object) -> None:
                loop.call_soon_threadsafe(settle, err)

            err: object = None
            try:
                assert self._producer is not None
                self._producer.produce(
                    target.dead_letter_topic,
                    key=record.key,
                    value=record.value,
                    headers=headers,
                    on_delivery=delivered,
                )
                err = await done
            except BufferError as exc:  # the producer's queue is full: wait like an error
                err = exc
            if err is None:
                break
            log.error(
                "%s: dead letter not written, retrying in %.1fs: %s",
                target.name,
                delay,
                err,
                extra={"event_id": record.event_id, "subscriber": target.name},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        self.counts.dead_lettered[reason] += 1
        self.metrics.dead_lettered.labels(target.name, reason).inc()
        log.warning(
            "%s: event dead-lettered to %s (%s): %s",
            target.name,
            target.dead_letter_topic,
            reason,
            error.message,
            extra={"event_id": record.event_id, "subscriber": target.name, "reason": reason},
        )

    # -- shutdown and health ------------------------------------------------------------
    async def _shutdown(self) -> None:
        """Give queued deliveries a grace period, commit what finished, leave the group."""
        grace = min(self.settings.webhooks_timeout_s, 10.0)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                busy = sum(t.pending for t in self.tracks.values())
            if not busy:
                break
            await asyncio.sleep(0.05)
        with self._lock:
            tasks = [task for track in self.tracks.values() for task in track.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit()
        if self._consumer is not None:
            await self._kafka_call(self._consumer.close)
        for target in self.targets:
            if target.session is not None:
                await target.session.close()
        self._kafka.shutdown(wait=False)
        self._log_progress()
        log.info("webhook sink stopped")

    async def _start_http(self) -> web.AppRunner | None:
        if not self.http_port:
            return None

        async def healthz(_app: web.Application) -> Checks:
            return {"loop": beating(self._last_loop, 60.0)}

        async def readyz(app: web.Application) -> Checks:
            group = check(self._joined.is_set(), group=self.settings.webhooks_group)
            return {**await healthz(app), "group": group}

        async def metrics(_app: web.Application) -> bytes:
            return self.metrics.render()

        app = web.Application()
        app.add_routes(routes(healthz=healthz, readyz=readyz, metrics=metrics))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self.http_port).start()
        log.info("health and metrics on port %d", self.http_port)
        return runner
