from __future__ import annotations

import pytest

from streams.signing import SignatureError, sign, signed_headers, verify


def test_signed_headers_verify() -> None:
    body = b'{"a":1}'
    h = signed_headers("k", body, now=1_000_000, key_id="pos-1")
    assert h["X-Key-Id"] == "pos-1" and len(h["X-Nonce"]) >= 8
    verify("k", h["X-Timestamp"], h["X-Nonce"], h["X-Signature"], body, 300, now=1_000_100)
    assert signed_headers("k", body)["X-Nonce"] != signed_headers("k", body)["X-Nonce"]


@pytest.mark.parametrize(
    ("secret", "ts", "nonce", "body", "now", "why"),
    [
        ("other", "1000000", "nonce-0001", b"{}", 1_000_000, "does not match"),
        ("k", "1000000", "nonce-0001", b"{ }", 1_000_000, "does not match"),
        ("k", "1000000", "nonce-0002", b"{}", 1_000_000, "does not match"),  # the nonce is signed too
        ("k", "1000000", "nonce-0001", b"{}", 1_000_301, "300 s"),
        ("k", "soon", "nonce-0001", b"{}", 1_000_000, "Unix seconds"),
        ("k", "1000000", "short", b"{}", 1_000_000, "X-Nonce"),
        ("k", "1000000", "bad nonce!", b"{}", 1_000_000, "X-Nonce"),
        ("k", "1000000", None, b"{}", 1_000_000, "X-Nonce"),
    ],
)
def test_bad_signatures_are_refused(secret: str, ts: str, nonce: str | None, body: bytes, now: int,
                                    why: str) -> None:
    sig = sign(secret, "1000000", "nonce-0001", b"{}")
    with pytest.raises(SignatureError, match=why):
        verify("k", ts, nonce, sig, body, 300, now=now)


def test_missing_headers_and_non_ascii_signatures_are_refused_not_crashed() -> None:
    with pytest.raises(SignatureError, match="required"):
        verify("k", None, None, None, b"{}", 300)
    with pytest.raises(SignatureError, match="does not match"):
        verify("k", "1000000", "nonce-0001", "é" * 64, b"{}", 300, now=1_000_000)
