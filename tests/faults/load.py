"""HTTP load that keeps the books a fault test compares: every event_id sent, every one
acknowledged (a 2xx listing it accepted), every answer's status and time, every refusal
and whether it said when to come back (Retry-After).

Each client posts batches of `page.viewed` events through nginx and behaves as Keel asks a
client to: what was not accepted (a 503, a timed-out or cut connection, a `failed` item of
a 207) is sent again with the same event_ids until it is."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.polling import wait_for
from tests.producers.conftest import read_topic


@dataclass(frozen=True)
class Answer:
    sent_at: float
    answered_at: float
    status: int  # 0: no answer (timed out, connection cut)
    accepted: int


@dataclass
class HttpLoad:
    url: str
    key: str
    clients: int = 3
    batch: int = 10
    users: int = 20  # per client: views count per user
    pause: float = 0.05  # between a client's requests: a modest load on a shared machine
    timeout: float = 30.0  # the client's own patience
    retry_pause: float = 0.2  # a client honouring Retry-After, shortened for the test
    acked: set[str] = field(default_factory=set)
    acked_by_user: dict[str, set[str]] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # got a non-2xx (or no answer) at least once
    statuses: Counter[int] = field(default_factory=Counter)
    answers: list[Answer] = field(default_factory=list)
    no_retry_after: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> HttpLoad:
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 120) -> None:
        """Stop sending new events; return once every client has its events accepted."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), (
            f"clients still retrying after {timeout:.0f}s: {self.statuses}"
        )
        assert not self.errors, self.errors[:3]

    def wait_acked(self, more: int, timeout: float, what: str) -> None:
        """Until `more` events beyond those acknowledged now are acknowledged."""
        target = len(self.acked) + more
        wait_for(
            lambda: len(self.acked) >= target, timeout,
            f"{more} more events acknowledged {what} (statuses so far {dict(self.statuses)})",
        )  # fmt: skip

    def refusals(self) -> int:
        return self.statuses[503]

    def accepted_between(self, start: float, end: float) -> list[Answer]:
        """Answers that accepted events for requests sent and answered within [start, end]."""
        return [
            a for a in self.answers if a.accepted and a.sent_at >= start and a.answered_at <= end
        ]

    # -- one client ---------------------------------------------------------------------
    def _client(self, n: int) -> None:
        pending: list[dict[str, Any]] = []
        i = 0
        try:
            while not self._stop.is_set() or pending:
                if not pending:
                    batch = []
                    for _ in range(self.batch):
                        batch.append(_event(f"u-{n}-{i % self.users}"))
                        i += 1
                else:
                    batch = pending
                sent_at = time.monotonic()
                status, headers, body = self._post({"events": batch})
                pending = self._book(batch, sent_at, status, headers, body)
                time.sleep(self.retry_pause if pending else self.pause)
        except Exception as exc:  # a bug of the test's client: fail the test, loudly
            with self._lock:
                self.errors.append(f"client {n}: {exc!r}")

    def _post(self, body: Any) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            f"{self.url}/v1/events", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                parsed = json.loads(payload) if payload else None
            except ValueError:
                parsed = payload[:200]
            return err.code, dict(err.headers), parsed
        except OSError:  # timed out, refused, reset: no answer, so nothing is known
            return 0, {}, None

    def _book(
        self, batch: list[dict[str, Any]], sent_at: float, status: int,
        headers: dict[str, str], body: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Record one answer; return the events to send again."""
        accepted: list[str] = []
        if status in (202, 207):
            accepted = [r["event_id"] for r in body["results"] if r["status"] == "accepted"]
            pending = [batch[r["index"]] for r in body["results"] if r["status"] != "accepted"]
        else:
            pending = batch
        with self._lock:
            self.statuses[status] += 1
            self.answers.append(Answer(sent_at, time.monotonic(), status, len(accepted)))
            self.sent.update(e["event_id"] for e in batch)
            self.acked.update(accepted)
            for event in batch:
                if event["event_id"] in accepted:
                    self.acked_by_user.setdefault(event["user_id"], set()).add(event["event_id"])
            self.refused.update(e["event_id"] for e in pending)
            if status == 503 and "Retry-After" not in headers:
                self.no_retry_after += 1
        if status not in (0, 202, 207, 503):
            raise AssertionError(f"unexpected answer {status}: {body}")
        return pending


def _event(user: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()), "type": "page.viewed", "user_id": user,
        "url": "https://shop.example/", "path": "/",
    }  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """Sets compared after a fault: acknowledged against what Kafka holds."""

    acknowledged: int
    lost: set[str]  # acknowledged, not on Kafka
    duplicated: set[str]  # on Kafka twice though its client never had to send it again
    copies: int  # further records of events a client sent again after a refusal (allowed)
    invented: set[str]  # on Kafka, never sent (would be a bug of the test or of Keel)


def verdict(
    load: HttpLoad,
    bootstrap: str,
    registry_url: str,
    topic: str,
    also_sent: frozenset[str] | set[str] = frozenset(),
) -> Verdict:
    """`also_sent`: events that reached the topic another way (at least once) than `load`."""
    # The soak acknowledges over a million events: a loaded host reads ~4k a second.
    records = read_topic(bootstrap, registry_url, topic, timeout=max(120, len(load.acked) / 2000))
    on_kafka = Counter(str(v["event_id"]) for *_, v in records)
    twice = {e for e, n in on_kafka.items() if n > 1}
    return Verdict(
        acknowledged=len(load.acked),
        lost=load.acked - set(on_kafka),
        duplicated=twice - load.refused - also_sent,
        copies=sum(n - 1 for e, n in on_kafka.items() if e in twice),
        invented=set(on_kafka) - load.sent - also_sent,
    )


def assert_honest(load: HttpLoad, result: Verdict) -> None:
    """The promises of the events API under a fault, in one place."""
    assert not result.lost, (
        f"{len(result.lost)} acknowledged events lost, e.g. {sorted(result.lost)[:3]}"
    )
    assert not result.duplicated, f"{len(result.duplicated)} events on Kafka twice without a retry"
    assert not result.invented, f"{len(result.invented)} events on Kafka that were never sent"
    assert load.no_retry_after == 0, f"{load.no_retry_after} answers 503 without Retry-After"
    assert load.sent == load.acked, "every client retried until its events were accepted"
