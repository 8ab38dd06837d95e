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
from typing import Any

from aiohttp import web

from schemas.errors import SchemaError
from schemas.registry.client import canonical
from schemas.registry.compat import DEFAULT_LEVEL, LEVELS, check, parse
from schemas.registry.store import KafkaStore, StoreUnavailable

log = logging.getLogger(__name__)
JSON_TYPES = {
    "application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json",
    "application/json", "application/octet-stream", "",
}  # fmt: skip
MAX_SCHEMA_BYTES = 256 * 1024
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
STORE: web.AppKey[KafkaStore] = web.AppKey("store", KafkaStore)


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
    try:
        return await handler(request)
    except ApiError as exc:
        status, code, message = exc.status, exc.code, exc.message
    except StoreUnavailable as exc:
        status, code, message = 500, 50001, f"Error in the backend data store: {exc}"
    except web.HTTPRequestEntityTooLarge:
        status, code, message = 413, 413, f"request body larger than {MAX_SCHEMA_BYTES} bytes"
    except web.HTTPException as exc:
        status, code, message = (
            exc.status,
            exc.status * 100 + 1 if exc.status == 404 else exc.status,
            exc.reason,
        )
    body = json.dumps({"error_code": code, "message": message})
    return web.Response(
        status=status, text=body, content_type="application/vnd.schemaregistry.v1+json"
    )


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


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return _ok({"status": "ok"})


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
        for _attempt in range(5):
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
            key = {
                "keytype": "SCHEMA",
                "subject": subject,
                "version": version,
                "id": schema_id,
                "magic": 1,
            }
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
                if applied is not None and applied.schema_id == schema_id:
                    return schema_id
            log.info("registration of %s lost a race with another replica; retrying", subject)
    raise StoreUnavailable(f"could not register a version of {subject} after 5 attempts")


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
                targets = sorted(all_versions)
            else:
                targets = [_version_number(store, subject, version, deleted=permanent)]
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
            key = {
                "keytype": "SCHEMA",
                "subject": subject,
                "version": number,
                "id": entry.schema_id,
                "magic": 1,
            }
            if permanent:
                store.write(key, None)
            elif not entry.deleted:
                text = store.state.schemas[entry.schema_id]
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
    problems = check(text, against, level)
    body: dict[str, Any] = {"is_compatible": not problems}
    if request.query.get("verbose") == "true":
        body["messages"] = problems
    return _ok(body)


def create_app(store: KafkaStore) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_SCHEMA_BYTES * 4)
    app[STORE] = store
    app.add_routes(routes)
    return app


__all__ = ["SchemaError", "create_app"]
