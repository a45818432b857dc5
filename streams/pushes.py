"""Pushes to members: issued coupons and expiry reminders, delivered to a webhook.

A push on the coupon-pushes topic is JSON with a `push_id`. The notifier POSTs it to
LOYALTY_PUSH_WEBHOOK_URL, signed like our callbacks (X-Timestamp, X-Signature =
hex(HMAC-SHA256(LOYALTY_PUSH_SECRET, ts + "." + body))), with the id in `X-Push-Id`
so the receiver can drop a second copy. A timeout or a non-2xx answer is retried with
exponential backoff; after LOYALTY_PUSH_ATTEMPTS it is dead-lettered. Once a push id
has been answered 2xx, Redis remembers it and the notifier never sends it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from streams.signing import signed_headers

log = logging.getLogger(__name__)


def coupon_push(row: dict[str, Any]) -> bytes:
    """The push of an issued coupon row (the coupon id is the push id)."""
    return orjson.dumps({
        "push_id": row["coupon_id"],
        "type": "coupon_issued",
        "member_id": row["member_id"],
        "event_id": row["event_id"],
        "coupon": {k: row.get(k) for k in ("coupon_id", "template", "trigger", "coupon_kind", "face_value_fen",
                                           "valid_until_ms")},
        "occurred_at_ms": row["occurred_at_ms"],
        "processed_at_ms": row["processed_at_ms"],
    })


def is_push(msg: dict[str, Any]) -> bool:
    """A coupon push (push_id) or a notice (kind + event_id), for a member: what the
    messaging webhook may be sent; anything else on the topic is a poison message."""
    def text(key: str) -> bool:
        return isinstance(msg.get(key), str) and bool(msg[key])

    return text("member_id") and (text("push_id") or (text("kind") and text("event_id")))


def push_id_of(msg: dict[str, Any]) -> str:
    """A push's id: its own, or for an expiry reminder (which predates push ids) its event's."""
    pid = msg.get("push_id")
    if isinstance(pid, str) and pid:
        return pid
    return f"notice:{msg.get('kind', 'notice')}:{msg.get('event_id', '')}"


@dataclass
class Delivery:
    push_id: str
    ok: bool
    attempts: int
    status: int | None
    error: str
    latency_ms: int


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str
    timeout_s: float = 2.0
    attempts: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    @functools.cached_property
    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout_s)

    async def deliver(self, session: aiohttp.ClientSession, push_id: str, body: bytes) -> Delivery:
        """POSTs one push until a 2xx, or `attempts` tries (backoff doubling between them)."""
        t0 = time.monotonic()
        delay, status, error = self.backoff_s, None, ""
        for attempt in range(1, self.attempts + 1):
            headers = {**signed_headers(self.secret, body), "X-Push-Id": push_id}
            try:
                async with session.post(self.url, data=body, headers=headers, timeout=self._timeout) as resp:
                    status = resp.status
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return Delivery(push_id, True, attempt, status, "", int((time.monotonic() - t0) * 1000))
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"[:300]
            if attempt < self.attempts:
                log.info("push %s: attempt %d failed (%s); retrying in %.1fs", push_id, attempt, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        return Delivery(push_id, False, self.attempts, status, error, int((time.monotonic() - t0) * 1000))
