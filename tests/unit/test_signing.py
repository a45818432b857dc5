from __future__ import annotations

import pytest

from streams.signing import SignatureError, sign, signed_headers, verify


def test_signed_headers_verify() -> None:
    body = b'{"a":1}'
    h = signed_headers("k", body, now=1_000_000)
    verify("k", h["X-Timestamp"], h["X-Signature"], body, 300, now=1_000_100)


@pytest.mark.parametrize(
    ("secret", "ts", "body", "now", "why"),
    [
        ("other", "1000000", b"{}", 1_000_000, "does not match"),
        ("k", "1000000", b"{ }", 1_000_000, "does not match"),
        ("k", "1000000", b"{}", 1_000_301, "300 s"),
        ("k", "soon", b"{}", 1_000_000, "Unix seconds"),
    ],
)
def test_bad_signatures_are_refused(secret: str, ts: str, body: bytes, now: int, why: str) -> None:
    sig = sign(secret, "1000000", b"{}")
    with pytest.raises(SignatureError, match=why):
        verify("k", ts, sig, body, 300, now=now)


def test_missing_headers() -> None:
    with pytest.raises(SignatureError, match="required"):
        verify("k", None, None, b"{}", 300)
