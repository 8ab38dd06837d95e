"""POST /v1/events and the operational endpoints.

The order of checks is the order of the statuses' cheapness: 401, 415, 413, 400, 403, 429,
then per-event validation (422 / 207), then Kafka (202 / 207 / 503). Nothing is produced
until every check that concerns the whole request has passed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter as Tally
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from keel.health import Checks, check
from keel.health import routes as health_routes
from keel.producers.context import Ingest, ingest_of
from keel.producers.errors import AuthError, Backpressure
from keel.producers.kafka_out import Delivery, Outgoing
from keel.producers.limits import retry_after_header
from keel.producers.metrics import (
    IN_FLIGHT,
    PRODUCE_LATENCY,
    accepted_counter,
    exposition,
    rejected_counter,
    requests_counter,
)
from keel.schemas.errors import RegistryError, ValidationFailed

log = logging.getLogger(__name__)
JSON_TYPES = frozenset({"application/json"})


def _loads(raw: bytes) -> Any:
    """orjson first (4x faster); what it refuses (NaN, integers past 64 bits, lone
    surrogates) goes to the standard parser, so accepted bodies and error messages stay
    those of `json`."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers,
        content_type="application/json", charset="utf-8",
    )  # fmt: skip


def _error(
    status: int,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    *,
    retry_after: float | None = None,
    results: list[dict[str, Any]] | None = None,
    reason: str | None = None,
    types: list[str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": message, "errors": errors or []}
    if results is not None:
        body["results"] = results
    headers = {"Retry-After": retry_after_header(retry_after)} if retry_after is not None else None
    requests_counter(status).inc()
    if reason:
        for event_type, n in Tally(types or ["unknown"]).items():
            rejected_counter(event_type, reason).inc(n)
    return _json_response(body, status, headers)


def _types_of(events: list[Any], known: Any) -> list[str]:
    """Each event's type for the metrics' labels: a catalog type or "unknown" (a client's
    made-up types must not grow the label set)."""
    return [
        t if type(t) is str and t in known else "unknown"
        for t in (e.get("type") if type(e) is dict else None for e in events)
    ]


async def post_events(request: web.Request) -> web.StreamResponse:
    ingest = ingest_of(request.app)
    IN_FLIGHT.inc()
    try:
        return await _post_events(request, ingest)
    finally:
        IN_FLIGHT.dec()


async def _post_events(request: web.Request, ingest: Ingest) -> web.StreamResponse:
    s = ingest.settings
    try:
        key = ingest.keys.authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        return _error(exc.status, str(exc), reason="unauthorized")
    if request.content_type not in JSON_TYPES:
        return _error(
            415,
            f"Content-Type must be application/json, not {request.content_type or 'none'!r}",
            reason="content_type",
        )
    if request.content_length is not None and request.content_length > s.ingest_max_body_bytes:
        return _body_too_large(s.ingest_max_body_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _body_too_large(s.ingest_max_body_bytes)
    except (web.RequestPayloadError, PayloadEncodingError):
        # aiohttp decodes the Content-Encoding while reading: a body that is not what its
        # header claims (or that breaks off) is the client's fault, not a 500.
        encoding = request.headers.get("Content-Encoding")
        if not encoding:
            return _error(400, "the body could not be read in full", reason="bad_json")
        return _error(
            400, f"body is not valid {encoding} (Content-Encoding: {encoding})",
            [{"field": "Content-Encoding", "error": f"body is not {encoding}"}],
            reason="bad_encoding",
        )  # fmt: skip
    if len(raw) > s.ingest_max_body_bytes:
        return _body_too_large(s.ingest_max_body_bytes)
    try:
        body = _loads(raw)
    except (ValueError, RecursionError) as exc:
        return _error(400, f"body is not valid JSON: {exc}", reason="bad_json")

    single = True
    if isinstance(body, dict) and "events" in body and "type" not in body:
        events = body["events"]
        single = False
        if not isinstance(events, list):
            return _error(
                400, "'events' must be an array", [{"field": "events", "error": "must be an array"}],
                reason="bad_json",
            )  # fmt: skip
        if set(body) != {"events"}:
            extra = sorted(set(body) - {"events"})
            return _error(
                400, "a batch holds only 'events'",
                [{"field": k, "error": "unknown field"} for k in extra], reason="bad_json",
            )  # fmt: skip
        if not events:
            return _error(
                400, "'events' is empty", [{"field": "events", "error": "at least 1 event"}],
                reason="bad_json",
            )  # fmt: skip
        if len(events) > s.ingest_max_batch_events:
            return _error(
                413,
                f"a batch holds at most {s.ingest_max_batch_events} events, not {len(events)}",
                [{"field": "events", "error": f"at most {s.ingest_max_batch_events} events"}],
                reason="too_large", types=_types_of(events, ingest.pipeline.catalog),
            )  # fmt: skip
    elif isinstance(body, dict):
        events = [body]
    else:
        return _error(
            400, "the body must be an event object or {\"events\": [...]}",
            [{"field": "", "error": "must be an object"}], reason="bad_json",
        )  # fmt: skip

    types = _types_of(events, ingest.pipeline.catalog)
    if len(raw) > s.ingest_max_event_bytes:  # only then can one event be too large
        for index, event in enumerate(events):
            size = len(raw) if single else len(json.dumps(event, separators=(",", ":")))
            if size > s.ingest_max_event_bytes:
                return _error(
                    413,
                    f"an event holds at most {s.ingest_max_event_bytes} bytes of JSON",
                    [_at(index, single, "", f"at most {s.ingest_max_event_bytes} bytes")],
                    reason="too_large", types=types,
                )  # fmt: skip
    if key.types is not None:
        denied = [
            _at(i, single, "type", f"this API key may not send {t!r}")
            for i, t in enumerate(types)
            if t != "unknown" and t not in key.types
        ]
        if denied:
            return _error(
                403, f"API key of source {key.source!r} may not send these event types",
                denied, reason="forbidden", types=types,
            )  # fmt: skip
    wait = ingest.limiter.check(key.key_id, len(events), key.rate)
    if wait:
        return _error(
            429, f"rate limit of this API key exceeded; retry in {retry_after_header(wait)} s",
            retry_after=wait, reason="rate_limited", types=types,
        )  # fmt: skip

    context = client_context(request, s.ingest_trust_forwarded)
    outgoing: list[Outgoing] = []
    positions: list[int] = []
    results: list[dict[str, Any] | None] = [None] * len(events)
    rejected: list[dict[str, Any]] = []
    prepare = ingest.pipeline.prepare
    now = datetime.now(UTC)  # one received_at for the request's events
    for index, event in enumerate(events):
        try:
            outgoing.append(prepare(event, source=key.source, context=context, now=now))
            positions.append(index)
        except ValidationFailed as exc:
            errors = [_at(index, single, e["field"], e["error"]) for e in exc.errors]
            rejected.extend(errors)
            results[index] = {"index": index, "status": "rejected", "errors": errors}
            rejected_counter(types[index], "invalid").inc()
        except RegistryError as exc:
            log.warning("registry unavailable: %s", exc)
            return _error(
                503,
                f"schema registry unavailable: {exc}",
                retry_after=2,
                reason="backpressure",
                types=types,
            )

    if not outgoing:
        if single:
            return _error(422, "invalid event", rejected)
        return _error(
            422, "no event of the batch is valid", rejected,
            results=[r for r in results if r is not None],
        )  # fmt: skip

    started = time.perf_counter()
    try:
        deliveries = await ingest.producer.send(outgoing)
    except Backpressure as exc:
        return _error(
            503, f"Kafka cannot take events now: {exc}", retry_after=exc.retry_after,
            reason="backpressure", types=types,
        )  # fmt: skip
    PRODUCE_LATENCY.observe(time.perf_counter() - started)
    return _answer(single, deliveries, positions, results, types)


def _answer(
    single: bool,
    deliveries: list[Delivery],
    positions: list[int],
    results: list[dict[str, Any] | None],
    types: list[str],
) -> web.Response:
    if single and deliveries[0].error is None:  # the common case, answered at once
        d = deliveries[0]
        accepted_counter(types[0]).inc()
        requests_counter(202).inc()
        return _json_response(
            {"event_id": d.event_id, "topic": d.topic, "partition": d.partition,
             "offset": d.offset},
            202,
        )  # fmt: skip
    accepted: Tally[str] = Tally()
    failed = 0
    retry_after = 0.0
    for index, d in zip(positions, deliveries, strict=True):
        if d.error is None:
            accepted[types[index]] += 1
            results[index] = {
                "index": index, "status": "accepted", "event_id": d.event_id,
                "topic": d.topic, "partition": d.partition, "offset": d.offset,
            }  # fmt: skip
        else:
            failed += 1
            retry_after = max(retry_after, getattr(d.error, "retry_after", 2.0))
            rejected_counter(types[index], "backpressure").inc()
            log.warning("event not acknowledged: %s", d.error, extra={"event_id": d.event_id})
            results[index] = {
                "index": index, "status": "failed", "event_id": d.event_id,
                "errors": [{"index": index, "field": "", "error": f"not stored: {d.error}"}],
            }  # fmt: skip
    for event_type, n in accepted.items():
        accepted_counter(event_type).inc(n)
    n_ok = sum(accepted.values())
    items = [r for r in results if r is not None]
    if n_ok == 0:
        return _error(
            503, "Kafka did not acknowledge the events; retry with the same event_id",
            [e for r in items for e in r.get("errors", [])], retry_after=retry_after or 2.0,
            results=items,
        )  # fmt: skip
    rejected = len(items) - n_ok - failed
    status = 202 if n_ok == len(items) else 207
    requests_counter(status).inc()
    headers = {"Retry-After": retry_after_header(retry_after)} if failed else None
    return _json_response(
        {"accepted": n_ok, "rejected": rejected, "failed": failed, "results": items},
        status, headers,
    )  # fmt: skip


def _at(index: int, single: bool, field: str, error: str) -> dict[str, Any]:
    return (
        {"field": field, "error": error}
        if single
        else {"index": index, "field": field, "error": error}
    )


def _body_too_large(limit: int) -> web.Response:
    return _error(
        413, f"the body holds at most {limit} bytes",
        [{"field": "", "error": f"at most {limit} bytes"}], reason="too_large",
    )  # fmt: skip


def client_context(request: web.Request, trust_forwarded: bool) -> dict[str, Any]:
    ip = request.remote
    if trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded:
            ip = forwarded.split(",")[0].strip() or ip
    context: dict[str, Any] = {"ip": ip}
    agent = request.headers.get("User-Agent")
    if agent:
        context["user_agent"] = agent
    return context


async def healthz(_app: web.Application) -> Checks:
    return {"http": check(True)}  # answering is all being alive takes here


async def readyz(app: web.Application) -> Checks:
    """The broker and the registry answer, and the catalog's schemas are registered; a
    broker that refuses this replica for a security reason is named (principal, topic)."""
    ingest = ingest_of(app)
    checks = {name: check(ok) for name, ok in (await ingest.readiness()).items()}
    problem = ingest.producer.security_problem
    if problem is not None and not checks["broker"].ok:
        checks["broker"] = check(False, error=problem)
    if ingest.registry_problem is not None and not checks["registry"].ok:
        checks["registry"] = check(False, error=ingest.registry_problem)
    return checks


async def metrics(app: web.Application) -> bytes:
    from keel.producers.metrics import QUEUED

    QUEUED.set(ingest_of(app).producer.queued())
    payload, _ = await asyncio.get_running_loop().run_in_executor(None, exposition)
    return payload


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(ingest_of(request.app).openapi)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/events", post_events)
    app.router.add_routes(health_routes(healthz=healthz, readyz=readyz, metrics=metrics))
    app.router.add_get("/openapi.json", openapi_json)
