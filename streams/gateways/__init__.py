"""Payment gateways' own notification formats (WeChat Pay API v3, Alipay), verified and
mapped to our payment and refund events. Pure functions here; the HTTP views are in
streams.http.gateways. Documented in docs/gateways.md."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from streams.errors import InputError


class GatewayError(InputError):
    """A notification that cannot be accepted: `.field` names what, the message says why.

    `status` is the HTTP status of the answer: every refusal makes the gateway retry
    later (a key or a route may be fixed meanwhile), and is dead-lettered."""

    def __init__(self, field: str, reason: str, *, status: int = 400, unrouted: str | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status
        #: The merchant number (mchid / app_id) of a notification that has no route.
        self.unrouted = unrouted


@dataclass(frozen=True)
class Mapped:
    """What a notification means for us: a payment, a refund, or nothing to do."""

    kind: str  # "payment" | "refund" | "ignored"
    event: dict[str, Any]
    note: str = ""


def load_rsa_public_key(pem: bytes, what: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM: a public key, a certificate, or bare base64 DER."""
    text = pem.strip()
    try:
        if b"BEGIN CERTIFICATE" in text:
            key: Any = x509.load_pem_x509_certificate(text).public_key()
        elif b"BEGIN" in text:
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_der_public_key(base64.b64decode(b"".join(text.split())))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"{what}: not a PEM public key or certificate ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{what}: not an RSA key")
    return key
