"""`keel demo`: realistic user sessions sent through the events API at a chosen rate.

Each simulated user signs up once, then comes back in sessions: pages, product views,
cart adds, sometimes an order, now and then a report request. Events of one user are sent
in order (one user's actions stay in one partition, in order)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from keel.producers.auth import create_key, keys_file
from keel.producers.errors import IngestError
from keel.settings import KeelSettings

PRODUCTS = [
    ("p-100", "books", Decimal("12.50")),
    ("p-101", "books", Decimal("24.00")),
    ("p-200", "garden", Decimal("39.90")),
    ("p-201", "garden", Decimal("7.25")),
    ("p-300", "kitchen", Decimal("89.00")),
    ("p-301", "kitchen", Decimal("15.99")),
    ("p-400", "toys", Decimal("19.95")),
]
PLANS = ["free", "pro", "team"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"]


def dev_key_file(settings: KeelSettings) -> Path:
    return settings.home / "ingest" / "dev.key"


def ensure_dev_key(settings: KeelSettings) -> tuple[str, bool]:
    """The local stack's development key (source `dev`): created once, kept in KEEL_HOME."""
    path = dev_key_file(settings)
    if path.exists():
        return path.read_text().strip(), False
    key = create_key(keys_file(settings), "dev")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, True


def dev_key(settings: KeelSettings) -> str:
    path = dev_key_file(settings)
    if not path.exists():
        raise IngestError("no development API key yet: run `keel up`, or pass --key")
    return path.read_text().strip()


@dataclass
class User:
    user_id: str
    signed_up: bool = False
    cart: list[tuple[str, int, Decimal]] = field(default_factory=list)


def _event(user: User, event_type: str, session: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "user_id": user.user_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "context": {"session_id": session, "user_agent": random.choice(AGENTS)},
        **fields,
    }


def session(user: User, rng: random.Random) -> Iterator[dict[str, Any]]:
    """One visit of one user, as the events it produces in order."""
    sid = uuid.uuid4().hex[:12]
    if not user.signed_up:
        user.signed_up = True
        yield _event(
            user, "user.signed_up", sid, email=f"{user.user_id}@example.com",
            name=f"User {user.user_id[-4:]}", plan=rng.choice(PLANS), referrer=None,
        )  # fmt: skip
    yield _event(user, "page.viewed", sid, url="https://shop.example/", path="/", title="Home",
                 referrer=None)  # fmt: skip
    for _ in range(rng.randint(1, 4)):
        product, category, price = rng.choice(PRODUCTS)
        yield _event(user, "product.viewed", sid, product_id=product, category=category,
                     price=str(price), currency="EUR")  # fmt: skip
        if rng.random() < 0.35:
            qty = rng.randint(1, 3)
            user.cart.append((product, qty, price))
            yield _event(user, "cart.item_added", sid, product_id=product, quantity=qty,
                         unit_price=str(price), currency="EUR")  # fmt: skip
    if user.cart and rng.random() < 0.5:
        total = sum((p * q for _, q, p in user.cart), Decimal("0"))
        items = [{"product_id": i, "quantity": q, "unit_price": str(p)} for i, q, p in user.cart]
        yield _event(user, "order.placed", sid, order_id=f"o-{uuid.uuid4().hex[:10]}",
                     items=items, total=str(total), currency="EUR")  # fmt: skip
        user.cart.clear()
    if rng.random() < 0.03:
        now = datetime.now(UTC)
        yield _event(user, "report.requested", sid, kind="orders",
                     period_start=(now - timedelta(days=30)).isoformat(),
                     period_end=now.isoformat())  # fmt: skip


def traffic(users: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless stream of events from interleaved sessions of `users` users."""
    people = [User(f"u-{rng.randrange(16**8):08x}") for _ in range(users)]
    active: list[Iterator[dict[str, Any]]] = []
    while True:
        while len(active) < max(1, users // 10):
            active.append(session(rng.choice(people), rng))
        current = rng.randrange(len(active))
        try:
            yield next(active[current])
        except StopIteration:
            active.pop(current)


async def run_demo(
    url: str, api_key: str, *, rate: float, duration: float, users: int, quiet: bool = False
) -> dict[str, Any]:
    """Send `rate` events/s (in small batches every 100 ms) for `duration` s (0: forever)."""
    if rate <= 0:
        raise IngestError("--rate must be positive")
    rng = random.Random()
    events = traffic(users, rng)
    stats = {"sent": 0, "accepted": 0, "rejected": 0, "failed": 0, "errors": 0}
    tick = 0.1
    started = time.monotonic()
    owed = 0.0
    headers = {"Authorization": f"Bearer {api_key}"}
    endpoint = url.rstrip("/") + "/v1/events"
    async with aiohttp.ClientSession(headers=headers) as http:
        try:
            while not duration or time.monotonic() - started < duration:
                owed += rate * tick
                n = int(owed)
                owed -= n
                if n:
                    batch = [next(events) for _ in range(n)]
                    await _send(http, endpoint, batch, stats)
                if not quiet:
                    elapsed = time.monotonic() - started
                    sys.stderr.write(
                        f"\r{elapsed:6.1f}s sent {stats['sent']} accepted {stats['accepted']} "
                        f"rejected {stats['rejected']} failed {stats['failed']} "
                        f"({stats['accepted'] / max(elapsed, 1e-9):.1f} events/s)   "
                    )
                    sys.stderr.flush()
                await asyncio.sleep(max(0.0, tick - (time.monotonic() - started) % tick))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
    if not quiet:
        sys.stderr.write("\n")
    return stats


async def _send(
    http: aiohttp.ClientSession, endpoint: str, batch: list[dict[str, Any]], stats: dict[str, int]
) -> None:
    stats["sent"] += len(batch)
    try:
        async with http.post(endpoint, json={"events": batch}) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
        stats["failed"] += len(batch)
        stats["errors"] += 1
        sys.stderr.write(f"\nrequest failed: {exc}\n")
        return
    if response.status in (202, 207):
        stats["accepted"] += body["accepted"]
        stats["rejected"] += body["rejected"]
        stats["failed"] += body.get("failed", 0)
    else:
        stats["failed" if response.status >= 500 or response.status == 429 else "rejected"] += len(
            batch
        )
        stats["errors"] += 1
        if response.status in (401, 403):
            raise IngestError(f"the API refused the key: {body.get('error')}")
