"""`keel up --secure`: the whole local stack on the secured cluster (SASL_SSL, SCRAM, ACLs),
each component as its own principal, the registry and the views API asking for credentials.
The end-to-end path runs through it (HTTP event -> view -> job -> email; outbox -> sink rows),
and no secret shows in any log, error, `keel status` or /metrics.

Long form (`make faults` runs it): the whole stack takes minutes on the shared machine; the
short form of each promise is in test_security_edge.py."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from keel.consumers.mail.server import Outbox
from tests.keel.test_stack import KEEL, stack_env
from tests.polling import wait_for
from tests.processes import http_get

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.long_form]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _post(
    url: str, body: Any, headers: dict[str, str], context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.timeout(1200)
def test_the_whole_stack_runs_secured_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env, port = stack_env(home)
    env["KEEL_PROMETHEUS_PORT"] = "0"  # not what this test is about

    def keel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KEEL, *args], env=env, capture_output=True, text=True, timeout=600, check=False
        )

    outputs: list[str] = []
    try:
        up = keel("up", "--secure", "--detach")
        outputs += [up.stdout, up.stderr]
        assert up.returncode == 0, up.stderr
        status = wait_for(
            lambda: (st := keel("status")).returncode == 0 and st, 240, "every service ready"
        )
        outputs.append(status.stdout)
        security = home / "security"
        secrets = {
            f"{kind}/{p.name}": p.read_text().strip()
            for kind in ("users", "registry", "views")
            for p in (security / kind).iterdir()
        }
        assert {"users/keel-ingest", "users/keel-streams", "users/keel-jobs", "users/keel-pgsink",
                "users/keel-outbox", "registry/keel-ingest", "views/keel-jobs"} <= set(secrets)  # fmt: skip
        dev_key = next(
            ln.split(": ")[1] for ln in up.stderr.splitlines() if "development API key" in ln
        )
        ingest = f"http://127.0.0.1:{port['ingest_lb']}/v1/events"
        registry = f"http://127.0.0.1:{port['registry']}"
        views = f"http://127.0.0.1:{port['streams']}/v1/views"

        # HTTP event -> view -> job -> email
        user = f"u-{uuid.uuid4().hex[:8]}"
        signed_up = {"type": "user.signed_up", "user_id": user, "email": f"{user}@example.com",
                     "name": "Ann"}  # fmt: skip
        status_code, body = _post(ingest, signed_up, {"Authorization": f"Bearer {dev_key}"})
        assert status_code == 202, body
        mail = Outbox(home / "outbox")
        welcome = wait_for(
            lambda: [m for m in mail.messages() if m.envelope_to == [f"{user}@example.com"]],
            180, "the welcome email",
        )  # fmt: skip
        assert welcome[0].subject.startswith("Welcome")
        views_key = secrets["views/keel-jobs"]
        found = wait_for(
            lambda: (a := _get(f"{views}/user_activity/{user}", {"Authorization": f"Bearer {views_key}"}))[0] == 200 and a,
            60, "the user's activity view",
        )  # fmt: skip
        assert found[1]["counts"]["user.signed_up"] == 1
        # the views API refuses a request without a key, and an events key (no views scope)
        assert _get(f"{views}/user_activity/{user}")[0] == 401
        refused = _get(f"{views}/user_activity/{user}", {"Authorization": f"Bearer {dev_key}"})
        assert refused[0] == 403 and "no scope 'views'" in refused[1]["error"], refused

        # nginx terminates TLS with the local CA's certificate
        https = f"https://localhost:{port['ingest_tls']}/v1/events"
        trusted = ssl.create_default_context(cafile=str(security / "ca.pem"))
        status_code, body = _post(
            https, {"type": "page.viewed", "user_id": user, "url": "https://shop.example/",
                    "path": "/"}, {"Authorization": f"Bearer {dev_key}"}, context=trusted,
        )  # fmt: skip
        assert status_code == 202, body

        # outbox -> Kafka -> PostgreSQL sink rows
        dsn = env["KEEL_POSTGRES_DSN"]
        event_id = str(uuid.uuid4())
        row = {"event_id": event_id, "type": "page.viewed", "user_id": user,
               "url": "https://shop.example/p/1", "path": "/p/1"}  # fmt: skip
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO keel_outbox (event) VALUES (%s)", (Jsonb(row),))

        def sunk() -> bool:
            with psycopg.connect(dsn) as conn:
                hit = conn.execute(
                    "SELECT source FROM keel_events WHERE event_id = %s", (event_id,)
                ).fetchone()
            return hit is not None and hit[0] == "outbox"

        wait_for(sunk, 120, "the outbox event as a pgsink row")

        # the registry: readers read, only writers register, nobody else
        assert _get(f"{registry}/subjects")[0] == 401
        reader = _basic("keel-pgsink", secrets["registry/keel-pgsink"])
        writer = _basic("keel-ingest", secrets["registry/keel-ingest"])
        assert _get(f"{registry}/subjects", reader)[0] == 200
        schema = {"schema": json.dumps({"type": "record", "name": "X", "fields": []})}
        subject = f"sec-{uuid.uuid4().hex[:8]}-value"
        denied = _post(f"{registry}/subjects/{subject}/versions", schema, reader)
        assert denied[0] == 403 and denied[1]["error_code"] == 40301, denied
        assert _post(f"{registry}/subjects/{subject}/versions", schema, writer)[0] == 200

        # no secret anywhere: logs, `keel status`, /metrics, /readyz
        listed = keel("status", "--json")
        outputs += [listed.stdout, listed.stderr]
        for st in json.loads(listed.stdout):
            if st["url"]:
                outputs += [http_get(st["url"] + path)[1] for path in ("/metrics", "/readyz")]
        outputs += [p.read_text(errors="replace") for p in (home / "logs").glob("*.log")]
        assert len(outputs) > 20
        for name, secret in secrets.items():
            leaks = [i for i, text in enumerate(outputs) if secret in text]
            assert not leaks, f"the secret {name} appears in outputs {leaks}"
    finally:
        down = keel("down")
        shutil.rmtree(f"/var/lib/postgresql/keel-{port['postgres']}", ignore_errors=True)
    assert down.returncode == 0, down.stderr
