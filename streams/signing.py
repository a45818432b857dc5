"""HMAC-SHA256 signatures of gateway callbacks: X-Signature = hex(HMAC(secret, ts + "." + body))."""

from __future__ import annotations

import hashlib
import hmac
import time


class SignatureError(Exception):
    """The callback's signature or timestamp is missing, malformed, stale or wrong."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    return {"X-Timestamp": ts, "X-Signature": sign(secret, ts, body), "Content-Type": "application/json"}


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    max_age_s: int,
    now: float | None = None,
) -> None:
    """Raises SignatureError unless the signature is right and the timestamp fresh."""
    if not timestamp or not signature:
        raise SignatureError("X-Timestamp and X-Signature headers are required")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("X-Timestamp must be Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - ts) > max_age_s:
        raise SignatureError(f"X-Timestamp is more than {max_age_s} s away from the server's clock")
    expected = sign(secret, timestamp, body)
    # compare_digest: constant time, so the signature cannot be guessed byte by byte.
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise SignatureError("X-Signature does not match the body")
