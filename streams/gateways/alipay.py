"""Alipay asynchronous notifications (异步通知), as the gateway sends them.

A form-encoded POST. The published rule: take every parameter but `sign` and
`sign_type`, sort by name, join as `name=value` with `&` (values URL-decoded),
and verify `sign` (base64) as RSA2 = RSA-SHA256 PKCS#1 v1.5 with the Alipay public
key. Amounts are yuan strings with at most two decimals. Alipay retries until the
body of the answer is exactly `success` (for about 25 hours, 8 times).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from streams.gateways import GatewayError, Mapped
from streams.gateways.mapping import GatewayRoutes, mall_order

CHANNEL = "alipay"
YUAN = re.compile(r"^(0|[1-9][0-9]{0,9})(?:\.([0-9]{1,2}))?$")
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gbk"}


def yuan_to_fen(field: str, value: str | None) -> int:
    """ "12.30" -> 1230, exactly (no floats); anything else is a GatewayError."""
    m = YUAN.fullmatch(value or "")
    if m is None:
        raise GatewayError(field, f"{value!r} is not an amount in yuan (digits, at most two decimals)")
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def parse_form(body: bytes) -> dict[str, str]:
    """The parameters of a form-encoded notification, decoded with its own `charset`."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise GatewayError("body", "a form-encoded body is ASCII (percent-encoded)") from None
    charset = "utf-8"
    for k, v in parse_qsl(text, keep_blank_values=True):
        if k == "charset":
            charset = CHARSETS.get(v.lower(), "")
            if not charset:
                raise GatewayError("charset", f"{v!r} is not supported (utf-8, gbk)")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding=charset, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("body", f"is not a form-encoded notification ({exc})") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise GatewayError(k, "appears twice")
        params[k] = v
    return params


def charset_of(params: Mapping[str, str]) -> str:
    return CHARSETS.get(params.get("charset", "utf-8").lower(), "utf-8")


def sign_content(params: Mapping[str, str]) -> str:
    """What Alipay signs: all parameters but sign and sign_type, sorted, `k=v` joined by `&`."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))


def verify(params: Mapping[str, str], public_key: rsa.RSAPublicKey) -> None:
    """Raises GatewayError (401: Alipay retries) unless `sign` verifies as RSA2."""
    sign_type = params.get("sign_type", "RSA2")
    if sign_type != "RSA2":
        raise GatewayError("sign_type", f"{sign_type!r} is not supported (RSA2)", status=401)
    try:
        signature = base64.b64decode(params.get("sign") or "", validate=True)
    except binascii.Error:
        raise GatewayError("sign", "is not base64", status=401) from None
    if not signature:
        raise GatewayError("sign", "is missing", status=401)
    try:
        # Alipay signs the bytes in the notification's own charset.
        content = sign_content(params).encode(charset_of(params))
        public_key.verify(signature, content, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise GatewayError("sign", "does not verify with the Alipay public key", status=401) from None


def _local_time(field: str, value: str | None) -> str:
    """Alipay's "2026-11-23 10:15:00" (Beijing time) as ISO-8601 with its offset."""
    if not value or not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,3})?", value):
        raise GatewayError(field, f"{value!r} is not yyyy-MM-dd HH:mm:ss")
    return value.replace(" ", "T") + "+08:00"


def payment_event_id(trade_no: str) -> str:
    return f"ali:{trade_no}"


def refund_event_id(trade_no: str, out_biz_no: str) -> str:
    readable = f"ali-refund:{trade_no}:{out_biz_no}"
    if len(readable) <= 64 and re.fullmatch(r"[A-Za-z0-9_.:@-]+", readable):
        return readable
    return "ali-refund:" + hashlib.sha256(f"{trade_no}\n{out_biz_no}".encode()).hexdigest()[:40]


def _required(params: Mapping[str, str], field: str) -> str:
    v = params.get(field)
    if not v:
        raise GatewayError(field, "is required")
    return v


def to_event(params: Mapping[str, str], routes: GatewayRoutes) -> Mapped:
    """Our payment or refund event for a verified notification.

    TRADE_SUCCESS / TRADE_FINISHED are the payment (one event id: the second is a
    duplicate). A notification with `out_biz_no` and `refund_fee` is a refund: Alipay
    reports `refund_fee` as the trade's refunded total, so the event is `cumulative`.
    """
    status = params.get("trade_status", "")
    if status not in ("TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED"):
        if status == "WAIT_BUYER_PAY":
            return Mapped("ignored", {}, "WAIT_BUYER_PAY: not paid yet")
        raise GatewayError("trade_status", f"{status!r} is not a trade status")
    trade_no = _required(params, "trade_no")
    total = yuan_to_fen("total_amount", params.get("total_amount"))
    buyer = params.get("buyer_id") or params.get("buyer_open_id")
    if not buyer:
        raise GatewayError("buyer_id", "is required (buyer_id or buyer_open_id)")
    route = routes.route(_required(params, "app_id"), params.get("seller_id", ""), params.get("passback_params"))
    common: dict[str, Any] = {
        "payer": {"kind": "alipay", "id": buyer},
        "bu_id": route.bu_id,
        "merchant_id": route.merchant_id,
        "category": route.category,
        "channel": CHANNEL,
    }
    if params.get("out_biz_no") and params.get("refund_fee"):
        refunded = yuan_to_fen("refund_fee", params["refund_fee"])
        if refunded == 0 or refunded > total:
            raise GatewayError("refund_fee", f"{refunded} fen does not fit the trade total {total}")
        return Mapped("refund", {
            "event_id": refund_event_id(trade_no, params["out_biz_no"]),
            "type": "refund",
            "refund_of": payment_event_id(trade_no),
            "occurred_at": _local_time("gmt_refund", params.get("gmt_refund") or params.get("notify_time")),
            "amount_fen": refunded,
            "cumulative": True,
            **common,
        })
    if status == "TRADE_CLOSED":
        return Mapped("ignored", {}, "TRADE_CLOSED without a refund: never paid")
    for field in ("receipt_amount", "buyer_pay_amount"):
        if params.get(field) and yuan_to_fen(field, params[field]) > total:
            raise GatewayError(field, f"{params[field]} yuan is more than the total {params['total_amount']}")
    if total == 0:
        raise GatewayError("total_amount", "must be more than 0")
    return Mapped("payment", {
        "event_id": payment_event_id(trade_no),
        "type": "payment",
        "occurred_at": _local_time("gmt_payment", params.get("gmt_payment") or params.get("notify_time")),
        "amount_fen": total,
        **common,
        **mall_order(params.get("passback_params")),
    })
