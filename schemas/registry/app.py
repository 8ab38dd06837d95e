"""The registry's REST API, as Confluent Schema Registry serves it (the subset clients use).

Errors answer with Confluent's body `{"error_code": N, "message": "..."}`: 40401 subject
not found, 40402 version not found, 40403 schema not found, 40404 subject soft-deleted,
40405 subject not soft-deleted, 409 incompatible, 42201 invalid schema, 42202 invalid
version, 42203 invalid compatibility level, 415 unsupported content type, 400 malformed
body, 413 too large, 50001/50003 store errors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from keel import health
from keel.schemas.errors import SchemaError
from keel.schemas.registry.auth import Denied, RegistryUsers
from keel.schemas.registry.client import canonical
from keel.schemas.registry.compat import DEFAULT_LEVEL, LEVELS, check, parse
from keel.schemas.registry.store import KafkaStore, StoreUnavailable, schema_key

log = logging.getLogger(__name__)
JSON_TYPES = {
    "application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json",
    "application/json", "application/octet-stream", "",
}  # fmt: skip
MAX_SCHEMA_BYTES = 256 * 1024
ATTEMPTS = 10  # registrations that lose a race with another replica retry this often
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
STORE: web.AppKey[KafkaStore] = web.AppKey("store", KafkaStore)
RESPONSES: web.AppKey[Counter[int]] = web.AppKey("responses", Counter)
USERS: web.AppKey[RegistryUsers | None] = web.AppKey("users")


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _ok(body: Any) -> web.Response:
    return web.Response(
        text=json.dumps(body), content_type="application/vnd.schemaregistry.v1+json"
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await _answer(request, handler)
    request.app[RESPONSES][response.status] += 1
    return response


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    headers = {}
    try:
        users = request.app[USERS]
        if users is not None:
            users.authorize(request.method, request.path, request.headers.get("Authorization"))
        return await handler(request)
    except Denied as exc:
        status, code, message = exc.status, exc.code, exc.message
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="keel-registry"'
    except ApiError as exc:
        status, code, message = exc.status, exc.code, exc.message
    except StoreUnavailable as exc:
        status, code, message = 500, 50001, f"Error in the backend data store: {exc}"
    except web.HTTPRequestEntityTooLarge:
        status, code, message = 413, 413, f"request body larger than {MAX_SCHEMA_BYTES} bytes"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # No such route (404) or method (405): Confluent answers with the HTTP status as code.
        status, code, message = exc.status, exc.status, f"{exc.reason}: {request.path}"
    except Exception:
        log.exception("registry request %s %s failed", request.method, request.path)
        status, code, message = 500, 50001, "Error in the backend data store (see the log)"
    body = json.dumps({"error_code": code, "message": message})
    return web.Response(
        status=status, text=body, content_type="application/vnd.schemaregistry.v1+json",
        headers=headers,
    )  # fmt: skip


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type not in JSON_TYPES:
        raise ApiError(
            415,
            415,
            f"unsupported content type {request.content_type!r}; send application/vnd.schemaregistry.v1+json",
        )
    raw = await request.read()
    if len(raw) > MAX_SCHEMA_BYTES:
        raise ApiError(
            413, 413, f"request body of {len(raw)} bytes is larger than {MAX_SCHEMA_BYTES}"
        )
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, 400, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, 400, "the body must be a JSON object")
    return body


def _schema_text(body: dict[str, Any]) -> str:
    schema_type = body.get("schemaType", "AVRO")
    if schema_type != "AVRO":
        raise ApiError(422, 42201, f"schemaType {schema_type!r} is not supported; only AVRO")
    if body.get("references"):
        raise ApiError(422, 42201, "schema references are not supported")
    text = body.get("schema")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, 42201, "Invalid schema: the 'schema' field (a string) is required")
    try:
        parse(text)
        return canonical(text)
    except Exception as exc:  # avro raises SchemaParseException, ValueError, TypeError...
        raise ApiError(422, 42201, f"Invalid schema: {exc}") from None


def _versions(store: KafkaStore, subject: str, deleted: bool = False) -> dict[int, Any]:
    versions = store.state.subjects.get(subject)
    live = {v: e for v, e in (versions or {}).items() if deleted or not e.deleted}
    if not live:
        raise ApiError(404, 40401, f"Subject '{subject}' not found.")
    return live


def _version_number(store: KafkaStore, subject: str, version: str, deleted: bool = False) -> int:
    live = _versions(store, subject, deleted)
    if version in ("latest", "-1"):
        return max(live)
    try:
        number = int(version)
    except ValueError:
        raise ApiError(
            422, 42202, f"The specified version '{version}' is not a valid version id."
        ) from None
    if number <= 0:
        raise ApiError(422, 42202, f"The specified version '{version}' is not a valid version id.")
    if number not in live:
        raise ApiError(404, 40402, f"Version {number} not found.")
    return number


def _level(store: KafkaStore, subject: str | None) -> str:
    return store.state.config.get(subject) or store.state.config.get(None) or DEFAULT_LEVEL


def _version_body(store: KafkaStore, subject: str, version: int) -> dict[str, Any]:
    entry = store.state.subjects[subject][version]
    return {
        "subject": subject,
        "version": version,
        "id": entry.schema_id,
        "schema": store.state.schemas[entry.schema_id],
    }


# -- routes ---------------------------------------------------------------------------------
routes = web.RouteTableDef()


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return _ok({})


# -- the operational surface (keel.health): /healthz, /readyz, /metrics -------------------
async def healthz(app: web.Application) -> health.Checks:
    return {"http": health.check(True)}


async def readyz(app: web.Application) -> health.Checks:
    """Loaded the store topic and still reading it."""
    store = app[STORE]
    return {
        "store": health.check(store.ready(), topic=store.topic, schemas=len(store.state.schemas))
    }


async def metrics(app: web.Application) -> bytes:
    store = app[STORE]
    with store._cond:
        schemas = len(store.state.schemas)
        subjects = sum(
            any(not v.deleted for v in vs.values()) for vs in store.state.subjects.values()
        )
        offset = store.applied_offset
    lines = [
        "# HELP keel_registry_schemas Distinct schemas (ids) known to this replica.",
        "# TYPE keel_registry_schemas gauge",
        f"keel_registry_schemas {schemas}",
        "# HELP keel_registry_subjects Subjects with at least one live version.",
        "# TYPE keel_registry_subjects gauge",
        f"keel_registry_subjects {subjects}",
        "# HELP keel_registry_store_offset Offset of the last store record applied.",
        "# TYPE keel_registry_store_offset gauge",
        f"keel_registry_store_offset {offset}",
        "# HELP keel_registry_responses_total Answers by HTTP status.",
        "# TYPE keel_registry_responses_total counter",
    ]
    for status, count in sorted(app[RESPONSES].items()):
        lines.append(f'keel_registry_responses_total{{status="{status}"}} {count}')
    return ("\n".join(lines) + "\n").encode()


@routes.get("/schemas/types")
async def schema_types(request: web.Request) -> web.Response:
    return _ok(["AVRO"])


@routes.get("/subjects")
async def list_subjects(request: web.Request) -> web.Response:
    store = request.app[STORE]
    deleted = request.query.get("deleted") == "true"
    with store._cond:
        names = [
            s
            for s, vs in store.state.subjects.items()
            if any(deleted or not v.deleted for v in vs.values())
        ]
    return _ok(sorted(names))


@routes.post("/subjects/{subject}/versions")
async def register(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    text = _schema_text(await _body(request))
    schema_id = await asyncio.to_thread(_register, store, subject, text)
    return _ok({"id": schema_id})


def _register(store: KafkaStore, subject: str, text: str) -> int:
    with store.write_lock:
        for _attempt in range(ATTEMPTS):
            with store._cond:
                versions = store.state.subjects.get(subject, {})
                for entry in versions.values():
                    if not entry.deleted and store.state.schemas.get(entry.schema_id) == text:
                        return entry.schema_id
                live = [
                    store.state.schemas[e.schema_id]
                    for _v, e in sorted(versions.items())
                    if not e.deleted
                ]
                level = _level(store, subject)
                schema_id = store.state.ids.get(text) or store.state.next_id()
                version = max(versions, default=0) + 1
            problems = check(text, live, level)
            if problems:
                raise ApiError(
                    409,
                    409,
                    f"Schema being registered is incompatible with an earlier schema for subject '{subject}' ({level}): "
                    + "; ".join(problems),
                )
            key = schema_key(subject, version, schema_id, text)
            store.write(
                key,
                {
                    "subject": subject,
                    "version": version,
                    "id": schema_id,
                    "schema": text,
                    "deleted": False,
                },
            )
            with store._cond:
                applied = store.state.subjects.get(subject, {}).get(version)
                if (
                    applied is not None
                    and applied.schema_id == schema_id
                    and store.state.schemas.get(schema_id) == text
                ):
                    return schema_id
            # Another replica's record for this version or id came first in the log. Withdraw
            # ours with a tombstone (every replica ignores it, as it ignored the record), so
            # that compaction removes it and a replay can never resurrect it.
            store.write(key, None)
            log.info("registration of %s lost a race with another replica; retrying", subject)
    raise StoreUnavailable(f"could not register a version of {subject} after {ATTEMPTS} attempts")


@routes.post("/subjects/{subject}")
async def lookup(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    text = _schema_text(await _body(request))
    deleted = request.query.get("deleted") == "true"
    with store._cond:
        live = _versions(store, subject, deleted)
        for version, entry in sorted(live.items()):
            if store.state.schemas.get(entry.schema_id) == text:
                return _ok(_version_body(store, subject, version))
    raise ApiError(404, 40403, "Schema not found")


@routes.get("/subjects/{subject}/versions")
async def list_versions(request: web.Request) -> web.Response:
    store = request.app[STORE]
    with store._cond:
        live = _versions(
            store, request.match_info["subject"], request.query.get("deleted") == "true"
        )
    return _ok(sorted(live))


@routes.get("/subjects/{subject}/versions/{version}")
async def get_version(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    with store._cond:
        version = _version_number(
            store, subject, request.match_info["version"], request.query.get("deleted") == "true"
        )
        return _ok(_version_body(store, subject, version))


@routes.get("/subjects/{subject}/versions/{version}/schema")
async def get_version_schema(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    with store._cond:
        version = _version_number(store, subject, request.match_info["version"])
        return web.Response(
            text=_version_body(store, subject, version)["schema"], content_type="application/json"
        )


@routes.get("/schemas")
async def list_schemas(request: web.Request) -> web.Response:
    """Every live (subject, version) with its id and schema; `subjectPrefix` filters."""
    store = request.app[STORE]
    prefix = request.query.get("subjectPrefix", "")
    deleted = request.query.get("deleted") == "true"
    latest_only = request.query.get("latestOnly") == "true"
    with store._cond:
        rows = []
        for subject in sorted(store.state.subjects):
            if not subject.startswith(prefix):
                continue
            live = [v for v, e in store.state.subjects[subject].items() if deleted or not e.deleted]
            for version in sorted(live)[-1:] if latest_only else sorted(live):
                rows.append(_version_body(store, subject, version))
    return _ok(rows)


@routes.get("/subjects/{subject}/versions/{version}/referencedby")
async def referenced_by(request: web.Request) -> web.Response:
    """Schema references are refused at registration, so no version is ever referenced."""
    store = request.app[STORE]
    with store._cond:
        _version_number(store, request.match_info["subject"], request.match_info["version"])
    return _ok([])


@routes.get("/schemas/ids/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    text = _schema_by_id(request)
    return _ok({"schema": text})


@routes.get("/schemas/ids/{id}/schema")
async def get_raw_by_id(request: web.Request) -> web.Response:
    return web.Response(text=_schema_by_id(request), content_type="application/json")


def _schema_by_id(request: web.Request) -> str:
    store = request.app[STORE]
    try:
        schema_id = int(request.match_info["id"])
    except ValueError:
        raise ApiError(404, 40403, "Schema not found") from None
    with store._cond:
        text = store.state.schemas.get(schema_id)
    if text is None:
        raise ApiError(404, 40403, f"Schema {schema_id} not found")
    return text


@routes.get("/schemas/ids/{id}/versions")
async def versions_by_id(request: web.Request) -> web.Response:
    store = request.app[STORE]
    _schema_by_id(request)
    schema_id = int(request.match_info["id"])
    with store._cond:
        found = [{"subject": s, "version": v} for s, vs in store.state.subjects.items()
                 for v, e in sorted(vs.items()) if e.schema_id == schema_id and not e.deleted]  # fmt: skip
    return _ok(found)


@routes.get("/schemas/ids/{id}/subjects")
async def subjects_by_id(request: web.Request) -> web.Response:
    store = request.app[STORE]
    _schema_by_id(request)
    schema_id = int(request.match_info["id"])
    deleted = request.query.get("deleted") == "true"
    with store._cond:
        found = sorted(s for s, vs in store.state.subjects.items()
                       if any(e.schema_id == schema_id and (deleted or not e.deleted)
                              for e in vs.values()))  # fmt: skip
    return _ok(found)


@routes.get("/contexts")
async def contexts(request: web.Request) -> web.Response:
    """Keel's registry has the default context only."""
    return _ok(["."])


@routes.delete("/subjects/{subject}")
async def delete_subject(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    permanent = request.query.get("permanent") == "true"
    versions = await asyncio.to_thread(_delete, store, subject, None, permanent)
    return _ok(versions)


@routes.delete("/subjects/{subject}/versions/{version}")
async def delete_version(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    permanent = request.query.get("permanent") == "true"
    versions = await asyncio.to_thread(
        _delete, store, subject, request.match_info["version"], permanent
    )
    return _ok(versions[0])


def _delete(store: KafkaStore, subject: str, version: str | None, permanent: bool) -> list[int]:
    with store.write_lock:
        with store._cond:
            all_versions = _versions(store, subject, deleted=True)
            if version is None:
                # A soft delete answers with the versions it deleted now (the live ones); a
                # permanent one with every version it removes.
                live = [v for v, e in all_versions.items() if permanent or not e.deleted]
                targets = sorted(live or all_versions)
            else:
                # A number is found among deleted versions too, so a second soft delete
                # answers 40406; `latest` is the latest live version for a soft delete.
                latest = version in ("latest", "-1")
                targets = [
                    _version_number(store, subject, version, deleted=permanent or not latest)
                ]
            entries = {v: all_versions[v] for v in targets}
        if permanent:
            if any(not e.deleted for e in entries.values()):
                raise ApiError(
                    404,
                    40405,
                    f"Subject '{subject}' was not deleted first before being permanently deleted",
                )
        elif all(e.deleted for e in entries.values()):
            raise ApiError(
                404,
                40404 if version is None else 40406,
                f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently",
            )
        for number, entry in entries.items():
            text = store.state.schemas[entry.schema_id]
            key = schema_key(subject, number, entry.schema_id, text)
            if permanent:
                store.write(key, None)
            elif not entry.deleted:
                store.write(
                    key,
                    {
                        "subject": subject,
                        "version": number,
                        "id": entry.schema_id,
                        "schema": text,
                        "deleted": True,
                    },
                )
        return targets


@routes.get("/config")
async def get_global_config(request: web.Request) -> web.Response:
    return _ok({"compatibilityLevel": _level(request.app[STORE], None)})


@routes.put("/config")
async def put_global_config(request: web.Request) -> web.Response:
    return await _put_config(request, None)


@routes.delete("/config")
async def delete_global_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    level = _level(store, None)
    await asyncio.to_thread(store.write, {"keytype": "CONFIG", "subject": None, "magic": 0}, None)
    return _ok({"compatibilityLevel": level})


@routes.get("/mode")
async def get_mode(request: web.Request) -> web.Response:
    return _ok({"mode": "READWRITE"})


@routes.get("/mode/{subject}")
async def get_subject_mode(request: web.Request) -> web.Response:
    return _ok({"mode": "READWRITE"})


@routes.get("/config/{subject}")
async def get_subject_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    level = store.state.config.get(subject)
    if level is None:
        if request.query.get("defaultToGlobal") == "true":
            return _ok({"compatibilityLevel": _level(store, None)})
        raise ApiError(
            404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
        )
    return _ok({"compatibilityLevel": level})


@routes.put("/config/{subject}")
async def put_subject_config(request: web.Request) -> web.Response:
    return await _put_config(request, request.match_info["subject"])


@routes.delete("/config/{subject}")
async def delete_subject_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    level = _level(store, subject)
    await asyncio.to_thread(
        store.write, {"keytype": "CONFIG", "subject": subject, "magic": 0}, None
    )
    return _ok({"compatibilityLevel": level})


async def _put_config(request: web.Request, subject: str | None) -> web.Response:
    store = request.app[STORE]
    body = await _body(request)
    level = body.get("compatibility", body.get("compatibilityLevel"))
    if level not in LEVELS:
        raise ApiError(
            422, 42203, f"Invalid compatibility level {level!r}; one of {', '.join(LEVELS)}"
        )
    await asyncio.to_thread(
        store.write,
        {"keytype": "CONFIG", "subject": subject, "magic": 0},
        {"compatibilityLevel": level},
    )
    return _ok({"compatibility": level})


@routes.post("/compatibility/subjects/{subject}/versions/{version}")
async def compatibility(request: web.Request) -> web.Response:
    """Check against one version (against all of them under a *_TRANSITIVE level)."""
    store = request.app[STORE]
    subject = request.match_info["subject"]
    text = _schema_text(await _body(request))
    with store._cond:
        version = _version_number(store, subject, request.match_info["version"])
        live = _versions(store, subject)
        level = _level(store, subject)
        if level.endswith("_TRANSITIVE"):
            against = [store.state.schemas[e.schema_id] for _v, e in sorted(live.items())]
        else:
            against = [store.state.schemas[live[version].schema_id]]
    return _compatibility_answer(request, text, against, level)


@routes.post("/compatibility/subjects/{subject}/versions")
async def compatibility_all(request: web.Request) -> web.Response:
    """Check as a registration would: against the versions the subject's level names (none
    yet: compatible)."""
    store = request.app[STORE]
    subject = request.match_info["subject"]
    text = _schema_text(await _body(request))
    with store._cond:
        live = store.state.subjects.get(subject, {})
        against = [
            store.state.schemas[e.schema_id] for _v, e in sorted(live.items()) if not e.deleted
        ]
        level = _level(store, subject)
    return _compatibility_answer(request, text, against, level)


def _compatibility_answer(
    request: web.Request, text: str, against: list[str], level: str
) -> web.Response:
    problems = check(text, against, level)
    body: dict[str, Any] = {"is_compatible": not problems}
    if request.query.get("verbose") == "true":
        body["messages"] = problems
    return _ok(body)


def create_app(store: KafkaStore, users: RegistryUsers | None = None) -> web.Application:
    """The REST API on `store`; with `users`, every request but the probes and /metrics
    needs HTTP basic auth (keel.schemas.registry.auth)."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_SCHEMA_BYTES * 4)
    app[STORE] = store
    app[USERS] = users
    app[RESPONSES] = Counter()
    app.add_routes(routes)
    app.add_routes(health.routes(healthz=healthz, readyz=readyz, metrics=metrics))
    return app


__all__ = ["SchemaError", "create_app"]
