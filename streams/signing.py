"""HMAC-SHA256 signatures of callbacks and till requests.

X-Signature = hex(HMAC(secret, timestamp + "." + nonce + "." + body)), with X-Timestamp
(Unix seconds) and X-Nonce (8-64 letters, digits, _ or -, new for every attempt). A POS
names its key with X-Key-Id; gateway callbacks use the callback secret and no key id.
The server refuses a stale timestamp and a nonce it has seen within the window (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from streams import errors

NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(errors.SignatureError):
    """The request's signature, timestamp or nonce is missing, malformed, stale or wrong."""


def sign(secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + nonce.encode() + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None, key_id: str | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(12)
    headers = {"X-Timestamp": ts, "X-Nonce": nonce, "X-Signature": sign(secret, ts, nonce, body),
               "Content-Type": "application/json"}
    if key_id is not None:
        headers["X-Key-Id"] = key_id
    return headers


def verify(
    secret: str,
    timestamp: str | None,
    nonce: str | None,
    signature: str | None,
    body: bytes,
    max_age_s: int,
    now: float | None = None,
) -> None:
    """Raises SignatureError unless the signature is right and the timestamp fresh (the
    caller checks the nonce against its cache afterwards)."""
    if not timestamp or not signature:
        raise SignatureError("X-Timestamp and X-Signature headers are required")
    if not nonce or not NONCE.fullmatch(nonce):
        raise SignatureError("X-Nonce header is required: 8-64 letters, digits, _ or -, new for every request")
    if not TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("X-Timestamp must be Unix seconds (1 to 12 digits)")
    ts = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - ts) > max_age_s:
        raise SignatureError(f"X-Timestamp is more than {max_age_s} s away from the server's clock")
    expected = sign(secret, timestamp, nonce, body)
    # compare_digest: constant time, so the signature cannot be guessed byte by byte.
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode(errors="replace")):
        raise SignatureError("X-Signature does not match the body")
