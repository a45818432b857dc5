"""The gateways' side, for tests, load tests and demos: keys generated on the spot,
notifications built and signed the way WeChat Pay v3 and Alipay publish them.

The tests check these fixtures with the gateways' published SDKs (wechatpayv3,
python-alipay-sdk), so they are the real formats, not our idea of them. WeChatPayApi is
WeChat Pay's side of the business circle's calls (points and parking sync), served on
127.0.0.1 and checking each call as WeChat Pay would.

Over 400 lines: both gateways' notification builders and WeChat Pay's API side are one
simulated counterpart that the tests, the load test and the demo use as a set.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.gateways.alipay import charset_of, sign_content

BEIJING = dt.timezone(dt.timedelta(hours=8))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


class WeChatPaySimulator:
    """WeChat Pay's platform: its signing key (public key mode, PUB_KEY_ID_...) and a
    merchant's APIv3 key that encrypts the notifications' resource."""

    def __init__(self, serial: str | None = None) -> None:
        self.platform_key = _new_key()
        self.serial = serial or "PUB_KEY_ID_" + secrets.token_hex(16).upper()
        self.apiv3_key = secrets.token_hex(16)  # 32 characters, like the real one

    @classmethod
    def in_directory(cls, directory: Path) -> WeChatPaySimulator:
        """The simulator whose keys are kept in `directory` (made there the first time), so
        a worker and a load generator started apart agree on them."""
        sim = cls()
        key_file, meta = directory / "wechatpay-platform.key", directory / "wechatpay.json"
        if key_file.exists() and meta.exists():
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{key_file}: not an RSA private key")
            sim.platform_key = loaded
            sim.serial, sim.apiv3_key = orjson.loads(meta.read_bytes())
        else:
            directory.mkdir(parents=True, exist_ok=True)
            key_file.write_text(private_pem(sim.platform_key))
            key_file.chmod(0o600)
            meta.write_bytes(orjson.dumps([sim.serial, sim.apiv3_key]))
            meta.chmod(0o600)
        return sim

    def env(self, directory: Path) -> dict[str, str]:
        """The LOYALTY_* variables a worker needs to accept this gateway's notifications."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"wechatpay-{self.serial}.pem"
        path.write_text(public_pem(self.platform_key))
        return {"LOYALTY_WECHATPAY_APIV3_KEY": self.apiv3_key,
                "LOYALTY_WECHATPAY_PLATFORM_KEYS": f"{self.serial}={path}"}

    @staticmethod
    def transaction(transaction_id: str, openid: str, total: int, *, mchid: str = "1900000109",
                    sub_mchid: str | None = None, attach: str | None = None, payer_total: int | None = None,
                    success_time: str | None = None) -> dict[str, Any]:
        """The decrypted resource of a TRANSACTION.SUCCESS notification (支付成功通知)."""
        res: dict[str, Any] = {
            "transaction_id": transaction_id,
            "amount": {"payer_total": total if payer_total is None else payer_total, "total": total,
                       "currency": "CNY", "payer_currency": "CNY"},
            "appid": "wxd678efh567hg6787",
            "out_trade_no": "1217752501201407033233368018",
            "trade_state": "SUCCESS",
            "bank_type": "CMC",
            "success_time": success_time or dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
            "payer": {"openid": openid},
            "trade_type": "MICROPAY",
            "trade_state_desc": "支付成功",
            "attach": attach or "",
        }
        if sub_mchid:
            res.update({"sp_mchid": mchid, "sub_mchid": sub_mchid, "sp_appid": res.pop("appid")})
            res["payer"] = {"sp_openid": openid}
        else:
            res["mchid"] = mchid
        return res

    @staticmethod
    def refund(refund_id: str, transaction_id: str, refund: int, total: int, *, mchid: str = "1900000109",
               success_time: str | None = None) -> dict[str, Any]:
        """The decrypted resource of a REFUND.SUCCESS notification (退款结果通知)."""
        return {
            "mchid": mchid,
            "transaction_id": transaction_id,
            "out_trade_no": "1217752501201407033233368018",
            "refund_id": refund_id,
            "out_refund_no": "R" + refund_id[-20:],
            "refund_status": "SUCCESS",
            "success_time": success_time or dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
            "user_received_account": "招商银行信用卡0403",
            "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund},
        }

    @staticmethod
    def circle_authorization(openid: str, code: str, *, mchid: str = "1900000109", appid: str = "wxd678efh567hg6787",
                             authorize_time: str | None = None) -> dict[str, Any]:
        """The decrypted resource of a business-circle authorisation (MALL_AUTH.ACTIVATE_CARD)."""
        return {"mchid": mchid, "appid": appid, "openid": openid, "code": code,
                "authorize_time": authorize_time or dt.datetime.now(BEIJING).isoformat(timespec="seconds")}

    @staticmethod
    def circle_transaction(transaction_id: str, openid: str, amount: int, shop_number: str, *,
                           mchid: str = "1900000109", appid: str = "wxd678efh567hg6787",
                           time_end: str | None = None) -> dict[str, Any]:
        """The decrypted resource of a business-circle payment (MALL_TRANSACTION.SUCCESS, 场内支付结果通知)."""
        return {"mchid": mchid, "merchant_name": "微信支付商圈", "shop_name": f"商铺 {shop_number}",
                "shop_number": shop_number, "appid": appid, "openid": openid,
                "time_end": time_end or dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
                "amount": amount, "transaction_id": transaction_id, "commit_tag": secrets.token_hex(8)}

    @staticmethod
    def circle_refund(refund_id: str, transaction_id: str, openid: str, refund: int, paid: int, shop_number: str, *,
                      mchid: str = "1900000109", appid: str = "wxd678efh567hg6787",
                      refund_time: str | None = None) -> dict[str, Any]:
        """The decrypted resource of a business-circle refund (MALL_REFUND.SUCCESS, 场内退款通知)."""
        return {"mchid": mchid, "merchant_name": "微信支付商圈", "shop_name": f"商铺 {shop_number}",
                "shop_number": shop_number, "appid": appid, "openid": openid,
                "refund_time": refund_time or dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
                "pay_amount": paid, "refund_amount": refund, "transaction_id": transaction_id,
                "refund_id": refund_id}

    def notification(self, event_type: str, resource: dict[str, Any], *, apiv3_key: str | None = None) -> bytes:
        """The body WeChat Pay posts: the resource encrypted with AEAD_AES_256_GCM."""
        nonce = secrets.token_hex(6)  # 12 characters
        ad = ("transaction" if "TRANSACTION" in event_type else "refund" if "REFUND" in event_type
              else "mall_auth" if event_type.startswith("MALL_AUTH") else "refund")
        key = (apiv3_key or self.apiv3_key).encode()
        ciphertext = AESGCM(key).encrypt(nonce.encode(), orjson.dumps(resource), ad.encode())
        body = {
            "id": "EV-" + secrets.token_hex(10),
            "create_time": dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": {"transaction": "支付成功", "refund": "退款成功"}.get(ad, "授权成功"),
            "resource": {"original_type": ad, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": ad,
                         "nonce": nonce},
        }
        return orjson.dumps(body)

    def headers(self, body: bytes, *, timestamp: int | None = None, serial: str | None = None,
                key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        """The Wechatpay-* headers: RSA-SHA256 over "timestamp\\nnonce\\nbody\\n"."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(16).upper()
        message = f"{ts}\n{nonce}\n".encode() + body + b"\n"
        return {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": _sign(key or self.platform_key, message),
            "Wechatpay-Serial": serial or self.serial,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }


@dataclass
class ApiCall:
    """A call WeChat Pay's API took: its path, headers and decoded JSON body."""

    path: str
    headers: dict[str, str]
    body: bytes
    json: dict[str, Any]


_AUTH_FIELDS = re.compile(r'(\w+)="([^"]*)"')
_POINTS_FIELDS = {"transaction_id": str, "appid": str, "openid": str, "earn_points": bool, "increased_points": int,
                  "points_update_time": str, "no_points_remarks": str, "total_points": int, "sub_mchid": str}
_PARKING_FIELDS = {"appid": str, "openid": str, "brandid": int, "plate_number": str, "state": str, "time": str,
                   "sub_mchid": str}


class WeChatPayApi:
    """WeChat Pay's API for the business circle on 127.0.0.1 (points sync, parking sync): the
    merchant's API key pair is made here, each call's Authorization is checked as WeChat Pay
    does (mchid, serial, timestamp window, RSA-SHA256 over METHOD, path, timestamp, nonce and
    body) and its body against the API's fields; `fail_status` makes it fail on demand."""

    PATHS = ("/v3/businesscircle/points/notify", "/v3/businesscircle/parkings")

    def __init__(self, mchid: str = "1900000109", brandid: int = 1000) -> None:
        self.mchid, self.brandid = mchid, brandid
        self.merchant_key = _new_key()
        self.serial = secrets.token_hex(20).upper()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.calls: list[ApiCall] = []
        self.refused: list[tuple[str, str]] = []  # (path, why) of calls answered 4xx
        self.failed = 0  # calls answered `fail_status`
        self.fail_status: int | None = None
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, directory: Path) -> dict[str, str]:
        """The LOYALTY_* variables of a worker that calls this API as the mall's merchant."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"merchant-{self.mchid}.key"
        path.write_text(private_pem(self.merchant_key))
        path.chmod(0o600)
        return {"LOYALTY_WECHATPAY_MCHID": self.mchid, "LOYALTY_WECHATPAY_MERCHANT_KEY": str(path),
                "LOYALTY_WECHATPAY_MERCHANT_SERIAL": self.serial, "LOYALTY_WECHATPAY_API_BASE": self.base_url,
                "LOYALTY_WECHATPAY_CIRCLE_BRANDID": str(self.brandid)}

    def why_unsigned(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """Why the call's Authorization is not the merchant's, or None if it is."""
        scheme, _, params = headers.get("Authorization", "").partition(" ")
        if scheme != "WECHATPAY2-SHA256-RSA2048":
            return f"Authorization scheme {scheme!r}"
        fields = dict(_AUTH_FIELDS.findall(params))
        if fields.get("mchid") != self.mchid or fields.get("serial_no") != self.serial:
            return f"mchid / serial_no {fields.get('mchid')!r} / {fields.get('serial_no')!r}"
        ts, nonce = fields.get("timestamp", ""), fields.get("nonce_str", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300 or not nonce:
            return f"timestamp {ts!r} / nonce_str {nonce!r}"
        try:
            signature = base64.b64decode(fields.get("signature", ""), validate=True)
            self.merchant_key.public_key().verify(signature, f"{method}\n{path}\n{ts}\n{nonce}\n".encode() + body
                                                  + b"\n", padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature):
            return "signature does not verify with the merchant's key"
        return None

    @staticmethod
    def why_bad_body(path: str, doc: Any) -> str | None:
        """Why a body is not what the API takes, or None."""
        kinds = _POINTS_FIELDS if path.endswith("/points/notify") else _PARKING_FIELDS
        if not isinstance(doc, dict):
            return "not a JSON object"
        required = ({"transaction_id", "appid", "openid", "earn_points", "increased_points", "points_update_time"}
                    if kinds is _POINTS_FIELDS else {"appid", "openid", "brandid", "plate_number", "state", "time"})
        if missing := required - doc.keys():
            return f"missing {sorted(missing)}"
        for name, value in doc.items():
            if name not in kinds or type(value) is not kinds[name]:
                return f"{name}: {value!r} is not a {kinds.get(name, type(None)).__name__}"
        times = ("points_update_time",) if kinds is _POINTS_FIELDS else ("time",)
        for name in times:
            try:
                if dt.datetime.fromisoformat(doc[name]).tzinfo is None:
                    return f"{name}: no UTC offset"
            except ValueError:
                return f"{name}: not RFC 3339"
        if kinds is _POINTS_FIELDS:
            if doc["earn_points"] != (doc["increased_points"] > 0):
                return "earn_points and increased_points disagree"
            if not doc["earn_points"] and not doc.get("no_points_remarks"):
                return "no_points_remarks is required when earn_points is false"
            if len(doc.get("no_points_remarks", "")) > 20:
                return "no_points_remarks: over 20 characters"
        elif doc["state"] not in ("IN", "OUT"):
            return f"state {doc['state']!r}"
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path_qs
        headers = dict(request.headers)
        why = self.why_unsigned(request.method, path, headers, body)
        doc: Any = None
        if why is None:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                why = "body is not JSON"
        code = "SIGN_ERROR" if why is not None else "PARAM_ERROR"
        why = why or self.why_bad_body(path, doc)
        if why is not None:
            with self.lock:
                self.refused.append((path, why))
            return web.json_response({"code": code, "message": why}, status=401 if code == "SIGN_ERROR" else 400)
        if self.fail_status is not None:
            with self.lock:
                self.failed += 1
            return web.json_response({"code": "SYSTEM_ERROR", "message": "系统繁忙"}, status=self.fail_status)
        with self.lock:
            self.calls.append(ApiCall(path, headers, body, doc))
        return web.Response(status=204)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        for path in self.PATHS:
            app.router.add_post(path, self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> WeChatPayApi:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def calls_to(self, path_end: str, **match: Any) -> list[ApiCall]:
        """The calls taken whose path ends with `path_end` and whose body has these values."""
        with self.lock:
            return [c for c in self.calls if c.path.endswith(path_end)
                    and all(c.json.get(k) == v for k, v in match.items())]


class AlipaySimulator:
    """Alipay's side: the key it signs notifications with, and an app id."""

    def __init__(self, app_id: str = "2021000000000001", seller_id: str = "2088000000000001") -> None:
        self.alipay_key = _new_key()
        self.app_id = app_id
        self.seller_id = seller_id

    @classmethod
    def in_directory(cls, directory: Path) -> AlipaySimulator:
        sim = cls()
        key_file = directory / "alipay-signing.key"
        if key_file.exists():
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{key_file}: not an RSA private key")
            sim.alipay_key = loaded
        else:
            directory.mkdir(parents=True, exist_ok=True)
            key_file.write_text(private_pem(sim.alipay_key))
            key_file.chmod(0o600)
        return sim

    def env(self, directory: Path) -> dict[str, str]:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"alipay-{self.app_id}.pem"
        # Alipay hands out the bare base64 key (no PEM lines): keep it that way.
        pem = public_pem(self.alipay_key)
        path.write_text("".join(line for line in pem.splitlines() if not line.startswith("-----")))
        return {"LOYALTY_ALIPAY_PUBLIC_KEY": str(path)}

    def trade(self, trade_no: str, buyer_id: str, total_yuan: str, *, status: str = "TRADE_SUCCESS",
              seller_id: str | None = None, passback: str | None = None, gmt_payment: str | None = None,
              **extra: str) -> dict[str, str]:
        """The parameters of a trade status notification (trade_status_sync), unsigned."""
        now = dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        params = {
            "notify_time": now,
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16),
            "app_id": self.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": trade_no,
            "out_trade_no": "6823789339978248",
            "buyer_id": buyer_id,
            "buyer_logon_id": "159****5620",
            "seller_id": seller_id or self.seller_id,
            "seller_email": "zhuzhanghu@alitest.com",
            "trade_status": status,
            "total_amount": total_yuan,
            "receipt_amount": total_yuan,
            "buyer_pay_amount": total_yuan,
            "subject": "商场消费",
            "gmt_create": now,
            "gmt_payment": gmt_payment or now,
            "fund_bill_list": orjson.dumps([{"amount": total_yuan, "fundChannel": "ALIPAYACCOUNT"}]).decode(),
        }
        if passback:
            params["passback_params"] = passback
        params.update(extra)
        return params

    def refund(self, trade: dict[str, str], out_biz_no: str, refund_fee_yuan: str, *, closed: bool = False,
               gmt_refund: str | None = None) -> dict[str, str]:
        """A refund notification of `trade`: `refund_fee` is the trade's refunded total."""
        params = {k: v for k, v in trade.items() if k not in ("sign", "sign_type")}
        params.update({
            "notify_id": secrets.token_hex(16),
            "out_biz_no": out_biz_no,
            "refund_fee": refund_fee_yuan,
            "gmt_refund": gmt_refund or dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S.000"),
            "trade_status": "TRADE_CLOSED" if closed else "TRADE_SUCCESS",
        })
        return params

    def sign(self, params: dict[str, str], key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
        signed = {**params, "sign_type": "RSA2"}
        signed["sign"] = _sign(key or self.alipay_key, sign_content(signed).encode(charset_of(signed)))
        return signed

    @staticmethod
    def body(signed: dict[str, str]) -> bytes:
        return urlencode(signed, encoding=charset_of(signed)).encode()


def simulators(directory: Path) -> tuple[WeChatPaySimulator, AlipaySimulator, dict[str, str]]:
    """Both simulators with their keys kept in `directory`, and the environment of a
    worker that trusts them (`loyalty gateways simulator-keys` prints it)."""
    wx, ali = WeChatPaySimulator.in_directory(directory), AlipaySimulator.in_directory(directory)
    return wx, ali, {**wx.env(directory), **ali.env(directory)}
