"""WeChat Pay smart business circle (智慧商圈): its notifications mapped to our events, and
the calls the mall makes back, signed per API v3 (docs/gateways.md).

Notifications arrive signed and encrypted exactly like the ordinary payment notifications
(streams.gateways.wechatpay verifies and decrypts them); their `event_type`:

- `MALL_AUTH.ACTIVATE_CARD`  商圈会员积分服务授权结果通知: a member authorised the circle;
- `MALL_TRANSACTION.SUCCESS` 商圈会员场内支付结果通知: a payment at a shop of the mall;
- `MALL_REFUND.SUCCESS`      商圈会员场内退款通知: a refund of one (after its points sync).

A circle payment is the same WeChat transaction as the ordinary notification's, so it
gets the same event id (`wx:<transaction_id>`) and earns once whichever arrives; a refund
likewise (`wx-refund:<refund_id>`).

The mall calls WeChat Pay back (商圈会员积分同步 `POST /v3/businesscircle/points/notify`,
商圈会员停车状态同步 `POST /v3/businesscircle/parkings`) with the merchant's Authorization
header: `WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",timestamp="..",
serial_no=".."`, the signature RSA-SHA256 (PKCS#1 v1.5) by the merchant's API key over
`METHOD\\nPATH\\ntimestamp\\nnonce\\nbody\\n`.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from streams.gateways import GatewayError, Mapped
from streams.gateways.mapping import GatewayRoutes
from streams.gateways.wechatpay import CHANNEL, SIGNATURE_TYPE, payment_event_id, refund_event_id
from streams.inputs import is_valid_id

AUTHORIZED = "MALL_AUTH.ACTIVATE_CARD"
PAID = "MALL_TRANSACTION.SUCCESS"
REFUNDED = "MALL_REFUND.SUCCESS"
POINTS_NOTIFY_PATH = "/v3/businesscircle/points/notify"
PARKINGS_PATH = "/v3/businesscircle/parkings"
BEIJING = dt.timezone(dt.timedelta(hours=8))


@dataclass(frozen=True)
class Authorization:
    """A member's authorisation of the circle: their openid (per app id) and our member id,
    which the mall's member card `code` is."""

    mchid: str
    appid: str
    openid: str
    member_id: str
    authorized_at: str


def _str(res: Mapping[str, Any], field: str, limit: int = 128) -> str:
    v = res.get(field)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise GatewayError(field, f"is required (a string of at most {limit} characters)")
    return v


def _fen(res: Mapping[str, Any], field: str) -> int:
    v = res.get(field)
    if type(v) is not int or v <= 0:
        raise GatewayError(field, f"must be a positive integer number of fen, got {v!r}")
    return v


def _time(res: Mapping[str, Any], field: str) -> str:
    """An RFC 3339 time with its offset, as the circle's notifications write them."""
    v = _str(res, field, 40)
    try:
        at = dt.datetime.fromisoformat(v)
    except ValueError:
        raise GatewayError(field, f"{v!r} is not an RFC 3339 time") from None
    if at.tzinfo is None:
        raise GatewayError(field, f"{v!r} has no UTC offset")
    return v


def event_type_of(notification: Mapping[str, Any]) -> str:
    event_type = notification.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise GatewayError("event_type", "is required (a string)")
    return event_type


def authorization(res: Mapping[str, Any]) -> Authorization:
    """The decrypted resource of a MALL_AUTH.ACTIVATE_CARD notification."""
    code = _str(res, "code", 64)
    if not is_valid_id(code):
        raise GatewayError("code", f"{code!r} is not a member id (the mall's member card code)")
    return Authorization(_str(res, "mchid", 32), _str(res, "appid", 32), _str(res, "openid"), code,
                         _time(res, "authorize_time"))


def to_event(event_type: str, res: Mapping[str, Any], routes: GatewayRoutes) -> Mapped:
    """Our payment or refund event for a decrypted payment or refund notification of the
    circle. The payer is the openid (`{kind: wechat}`); a refund's payer and route are its
    payment's (the caller adds them, as for the ordinary refund notifications)."""
    if event_type == PAID:
        _str(res, "mchid", 32)
        transaction_id = _str(res, "transaction_id", 32)
        route = routes.circle_shop(_str(res, "shop_number", 64))
        return Mapped("payment", {
            "event_id": payment_event_id(transaction_id),
            "type": "payment",
            "occurred_at": _time(res, "time_end"),
            "payer": {"kind": "wechat", "id": _str(res, "openid")},
            "bu_id": route.bu_id,
            "merchant_id": route.merchant_id,
            "category": route.category,
            "amount_fen": _fen(res, "amount"),
            "channel": CHANNEL,
        }, note=_str(res, "appid", 32))
    if event_type == REFUNDED:
        _str(res, "mchid", 32)
        paid, refund = _fen(res, "pay_amount"), _fen(res, "refund_amount")
        if refund > paid:
            raise GatewayError("refund_amount", f"{refund} fen is more than the payment's {paid}")
        return Mapped("refund", {
            "event_id": refund_event_id(_str(res, "refund_id", 64)),
            "type": "refund",
            "refund_of": payment_event_id(_str(res, "transaction_id", 32)),
            "occurred_at": _time(res, "refund_time"),
            "amount_fen": refund,
            "channel": CHANNEL,
        }, note=_str(res, "openid"))
    return Mapped("ignored", {}, f"event_type {event_type!r} is not a circle payment or refund")


@dataclass(frozen=True)
class MerchantSigner:
    """The mall's merchant identity for API v3 calls: mchid, API private key and serial."""

    mchid: str
    serial: str
    key: rsa.RSAPrivateKey
    api_base: str

    @classmethod
    def from_settings(cls, mchid: str, key_path: str, serial: str, api_base: str) -> MerchantSigner | None:
        """None when the circle is not configured; ValueError when configured wrongly."""
        if not (mchid or key_path or serial):
            return None
        if not (mchid and key_path and serial):
            raise ValueError("LOYALTY_WECHATPAY_MCHID, LOYALTY_WECHATPAY_MERCHANT_KEY and "
                             "LOYALTY_WECHATPAY_MERCHANT_SERIAL are needed together")
        try:
            loaded = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        except OSError as exc:
            raise ValueError(f"LOYALTY_WECHATPAY_MERCHANT_KEY: cannot read {key_path}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"LOYALTY_WECHATPAY_MERCHANT_KEY: {key_path} is not a PEM private key ({exc})") from None
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"LOYALTY_WECHATPAY_MERCHANT_KEY: {key_path} is not an RSA key")
        if not api_base.startswith(("https://", "http://")):
            raise ValueError(f"LOYALTY_WECHATPAY_API_BASE: {api_base!r} is not an http(s) URL")
        return cls(mchid, serial, loaded, api_base.rstrip("/"))

    def authorization(self, method: str, path: str, body: bytes, *, timestamp: int | None = None,
                      nonce: str | None = None) -> str:
        """The Authorization header of a call (path with its query string, as sent)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_hex(16).upper()
        message = f"{method}\n{path}\n{ts}\n{nonce}\n".encode() + body + b"\n"
        signature = base64.b64encode(self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
        return (f'{SIGNATURE_TYPE} mchid="{self.mchid}",nonce_str="{nonce}",signature="{signature}",'
                f'timestamp="{ts}",serial_no="{self.serial}"')


def points_sync_body(transaction_id: str, appid: str, openid: str, points: int, updated_ms: int,
                     no_points_remarks: str, total_points: int | None) -> bytes:
    """The 商圈会员积分同步 request: earn_points false (with the reason) for a payment that
    earned nothing."""
    body: dict[str, Any] = {
        "transaction_id": transaction_id,
        "appid": appid,
        "openid": openid,
        "earn_points": points > 0,
        "increased_points": max(points, 0),
        "points_update_time": dt.datetime.fromtimestamp(updated_ms / 1000, BEIJING).isoformat(
            timespec="milliseconds"),
    }
    if points <= 0:
        body["no_points_remarks"] = no_points_remarks[:20] or "本单不积分"
    if total_points is not None:
        body["total_points"] = max(total_points, 0)
    return orjson.dumps(body)


def parking_sync_body(appid: str, openid: str, brandid: int, plate: str, state: str, at_iso: str) -> bytes:
    """The 商圈会员停车状态同步 request: state IN on entry, OUT on exit."""
    return orjson.dumps({"appid": appid, "openid": openid, "brandid": brandid, "plate_number": plate,
                         "state": state, "time": at_iso})
