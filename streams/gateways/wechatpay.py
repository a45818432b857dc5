"""WeChat Pay API v3 notifications (支付通知 / 退款结果通知), as the gateway sends them.

The published scheme: headers Wechatpay-Timestamp, -Nonce, -Signature, -Serial and
-Signature-Type; the signature is RSA-SHA256 (PKCS#1 v1.5) with the platform key
named by the serial, over "timestamp\\nnonce\\nbody\\n". The body's `resource` is
AEAD_AES_256_GCM ciphertext under the merchant's APIv3 key (nonce and
associated_data in the clear). Amounts are integer fen already.

A 2xx answer tells WeChat Pay to stop; any 4xx/5xx with {"code": "FAIL", ...}
makes it retry (for about 24 hours).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.gateways import GatewayError, Mapped, load_rsa_public_key
from streams.gateways.mapping import GatewayRoutes, mall_order

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHANNEL = "wechatpay"


@dataclass(frozen=True)
class WeChatPayKeys:
    apiv3_key: bytes
    platform: dict[str, rsa.RSAPublicKey]  # serial (or public key id) -> key

    @classmethod
    def from_settings(cls, apiv3_key: str, platform_keys: str) -> WeChatPayKeys | None:
        """None when WeChat Pay is not configured; ValueError when configured wrongly.

        platform_keys: "SERIAL=/path/to/key-or-cert.pem[,SERIAL2=/path2]" (two during a rotation)."""
        if not apiv3_key and not platform_keys:
            return None
        if len(apiv3_key.encode()) != 32:
            raise ValueError("LOYALTY_WECHATPAY_APIV3_KEY must be the 32-character APIv3 key")
        platform: dict[str, rsa.RSAPublicKey] = {}
        for item in filter(None, (p.strip() for p in platform_keys.split(","))):
            serial, sep, path = item.partition("=")
            if not sep or not serial or not path:
                raise ValueError(f"LOYALTY_WECHATPAY_PLATFORM_KEYS: {item!r} is not SERIAL=/path/to/key.pem")
            try:
                pem = Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"LOYALTY_WECHATPAY_PLATFORM_KEYS: cannot read {path}: {exc.strerror}") from None
            platform[serial.strip().upper()] = load_rsa_public_key(pem, f"platform key {serial}")
        if not platform:
            raise ValueError("LOYALTY_WECHATPAY_PLATFORM_KEYS must name at least one SERIAL=/path/to/key.pem")
        return cls(apiv3_key.encode(), platform)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise GatewayError(name, "header is missing", status=401)
    return value


def verify(headers: Mapping[str, str], body: bytes, keys: WeChatPayKeys, now_s: float, max_age_s: int) -> None:
    """Raises GatewayError (401: the gateway retries) unless the notification is signed
    by a configured platform key within the timestamp window."""
    kind = headers.get("Wechatpay-Signature-Type") or SIGNATURE_TYPE
    if kind != SIGNATURE_TYPE:
        raise GatewayError("Wechatpay-Signature-Type", f"{kind!r} is not supported ({SIGNATURE_TYPE})", status=401)
    serial = _header(headers, "Wechatpay-Serial")
    key = keys.platform.get(serial.upper())  # certificate serials are hex: any case
    if key is None:
        raise GatewayError("Wechatpay-Serial", f"{serial[:64]!r} is not a configured platform key", status=401)
    raw_ts = _header(headers, "Wechatpay-Timestamp")
    if not raw_ts.isdigit() or len(raw_ts) > 12:
        raise GatewayError("Wechatpay-Timestamp", "must be Unix seconds", status=401)
    if abs(now_s - int(raw_ts)) > max_age_s:
        raise GatewayError("Wechatpay-Timestamp", f"outside the {max_age_s} s window (replay or clock skew)",
                           status=401)
    nonce = _header(headers, "Wechatpay-Nonce")
    try:
        signature = base64.b64decode(_header(headers, "Wechatpay-Signature"), validate=True)
    except binascii.Error:
        raise GatewayError("Wechatpay-Signature", "is not base64", status=401) from None
    message = b"%s\n%s\n%s\n" % (raw_ts.encode(), nonce.encode(), body)
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise GatewayError("Wechatpay-Signature", "does not verify with the platform key", status=401) from None


def decrypt(notification: Mapping[str, Any], keys: WeChatPayKeys) -> dict[str, Any]:
    """The decrypted `resource` of a verified notification."""
    res = notification.get("resource")
    if not isinstance(res, dict):
        raise GatewayError("resource", "is required (an object)")
    if res.get("algorithm") != "AEAD_AES_256_GCM":
        raise GatewayError("resource.algorithm", f"{res.get('algorithm')!r} is not AEAD_AES_256_GCM")
    nonce, ciphertext, ad = res.get("nonce"), res.get("ciphertext"), res.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str) or not isinstance(ad, str):
        raise GatewayError("resource", "nonce, ciphertext and associated_data must be strings")
    try:
        plain = AESGCM(keys.apiv3_key).decrypt(nonce.encode(), base64.b64decode(ciphertext, validate=True), ad.encode())
    except (InvalidTag, binascii.Error, ValueError):
        raise GatewayError("resource.ciphertext", "does not decrypt with the APIv3 key (tampered?)",
                           status=401) from None
    try:
        out = orjson.loads(plain)
    except orjson.JSONDecodeError:
        raise GatewayError("resource", "decrypts to something that is not JSON") from None
    if not isinstance(out, dict):
        raise GatewayError("resource", "decrypts to JSON that is not an object")
    return out


def open_notification(headers: Mapping[str, str], body: bytes, keys: WeChatPayKeys, now_s: float,
                      max_age_s: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A notification verified (signature, timestamp) and parsed, and its resource decrypted:
    (notification, resource); GatewayError naming what is wrong otherwise."""
    verify(headers, body, keys, now_s, max_age_s)
    try:
        notification: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError("body", "is not JSON") from None
    if not isinstance(notification, dict):
        raise GatewayError("body", "must be a JSON object")
    return notification, decrypt(notification, keys)


def _str(obj: Mapping[str, Any], field: str, where: str = "") -> str:
    v = obj.get(field)
    if not isinstance(v, str) or not v:
        raise GatewayError(f"{where}{field}", "is required (a string)")
    return v


def _fen(obj: Mapping[str, Any], field: str, where: str = "amount.") -> int:
    v = obj.get(field)
    if type(v) is not int or v <= 0:
        raise GatewayError(f"{where}{field}", f"must be a positive integer number of fen, got {v!r}")
    return v


def _amount(res: Mapping[str, Any]) -> dict[str, Any]:
    amount = res.get("amount")
    if not isinstance(amount, dict):
        raise GatewayError("amount", "is required (an object)")
    currency = amount.get("currency", "CNY")
    if currency != "CNY":
        raise GatewayError("amount.currency", f"{currency!r}: only CNY is earned on")
    return amount


def payment_event_id(transaction_id: str) -> str:
    return f"wx:{transaction_id}"


def refund_event_id(refund_id: str) -> str:
    if len(refund_id) <= 54:
        return f"wx-refund:{refund_id}"
    return "wx-refund:" + hashlib.sha256(refund_id.encode()).hexdigest()[:40]


def to_event(notification: Mapping[str, Any], res: Mapping[str, Any], routes: GatewayRoutes) -> Mapped:
    """Our payment or refund event for a decrypted notification. A refund's payer and
    route are not in its notification: the caller adds them from the payment's."""
    event_type = notification.get("event_type")
    if event_type == "TRANSACTION.SUCCESS":
        if res.get("trade_state") != "SUCCESS":
            return Mapped("ignored", {}, f"trade_state {res.get('trade_state')!r}")
        amount = _amount(res)
        total = _fen(amount, "total")
        payer_total = amount.get("payer_total", total)
        if type(payer_total) is not int or not 0 <= payer_total <= total:
            raise GatewayError("amount.payer_total", f"{payer_total!r} does not fit the order total {total}")
        payer = res.get("payer")
        if not isinstance(payer, dict):
            payer = {}
        openid = payer.get("openid") or payer.get("sp_openid") or payer.get("sub_openid")
        if not isinstance(openid, str) or not openid:
            raise GatewayError("payer.openid", "is required (a string)")
        account = res.get("mchid") or res.get("sp_mchid")
        if not isinstance(account, str) or not account:
            raise GatewayError("mchid", "is required (mchid, or sp_mchid in partner mode)")
        sub = res.get("sub_mchid")
        if not isinstance(sub, str):
            sub = ""
        attach = res.get("attach") if isinstance(res.get("attach"), str) else None
        route = routes.route(account, sub, attach)
        return Mapped("payment", {
            "event_id": payment_event_id(_str(res, "transaction_id")),
            "type": "payment",
            "occurred_at": _str(res, "success_time"),
            "payer": {"kind": "wechat", "id": openid},
            "bu_id": route.bu_id,
            "merchant_id": route.merchant_id,
            "category": route.category,
            "amount_fen": total,
            "channel": CHANNEL,
            **mall_order(attach),
        })
    if event_type == "REFUND.SUCCESS":
        if res.get("refund_status") != "SUCCESS":
            return Mapped("ignored", {}, f"refund_status {res.get('refund_status')!r}")
        amount = _amount(res)
        total, refund = _fen(amount, "total"), _fen(amount, "refund")
        if refund > total:
            raise GatewayError("amount.refund", f"{refund} fen is more than the order total {total}")
        return Mapped("refund", {
            "event_id": refund_event_id(_str(res, "refund_id")),
            "type": "refund",
            "refund_of": payment_event_id(_str(res, "transaction_id")),
            "occurred_at": _str(res, "success_time"),
            "amount_fen": refund,
            "channel": CHANNEL,
        })
    if event_type in ("REFUND.ABNORMAL", "REFUND.CLOSED"):
        return Mapped("ignored", {}, f"{event_type}: no money moved")
    if not isinstance(event_type, str) or not event_type:
        raise GatewayError("event_type", "is required (a string)")
    return Mapped("ignored", {}, f"event_type {event_type!r} is not about payments")
