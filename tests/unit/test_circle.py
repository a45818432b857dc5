"""WeChat Pay business circle (智慧商圈) without services: the simulator's notifications
accepted by the published SDK (wechatpayv3) and mapped by us; our API v3 request signature
byte-for-byte the SDK's; the sync bodies the simulator's API takes; the circle shops'
configuration and its errors."""

from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import orjson
import pytest
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import build_authorization

from devtools.gateways import WeChatPayApi, WeChatPaySimulator, _new_key, private_pem, public_pem
from streams.gateways import GatewayError, circle, wechatpay
from streams.gateways.mapping import GatewayConfigError, load_config, parse_config
from streams.settings import ROOT

CONFIG = load_config(ROOT / "rules" / "gateways.toml")
TX = "4200000001202611300000000001"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


@pytest.fixture(scope="module")
def api() -> WeChatPayApi:
    return WeChatPayApi()  # not started: its checks are called directly


@pytest.fixture(scope="module")
def signer(api: WeChatPayApi, tmp_path_factory: pytest.TempPathFactory) -> circle.MerchantSigner:
    env = api.env(tmp_path_factory.mktemp("merchant"))
    got = circle.MerchantSigner.from_settings(env["LOYALTY_WECHATPAY_MCHID"], env["LOYALTY_WECHATPAY_MERCHANT_KEY"],
                                              env["LOYALTY_WECHATPAY_MERCHANT_SERIAL"],
                                              env["LOYALTY_WECHATPAY_API_BASE"])
    assert got is not None
    return got


def sdk(wx: WeChatPaySimulator) -> WeChatPay:
    return WeChatPay(wechatpay_type=WeChatPayType.MINIPROG, mchid="1900000109", private_key=private_pem(_new_key()),
                     cert_serial_no="444F4864EA9B34415", appid="wxd678efh567hg6787", apiv3_key=wx.apiv3_key,
                     public_key=public_pem(wx.platform_key), public_key_id=wx.serial)


def _decrypted(wx: WeChatPaySimulator, keys: wechatpay.WeChatPayKeys, body: bytes) -> tuple[dict, dict]:
    wechatpay.verify(wx.headers(body), body, keys, time.time(), 300)
    note = orjson.loads(body)
    return note, wechatpay.decrypt(note, keys)


@pytest.mark.parametrize("event_type", [circle.AUTHORIZED, circle.PAID, circle.REFUNDED])
def test_circle_notifications_are_what_the_published_sdk_accepts(wx: WeChatPaySimulator, event_type: str) -> None:
    res = {circle.AUTHORIZED: wx.circle_authorization(OPENID, "m-0001"),
           circle.PAID: wx.circle_transaction(TX, OPENID, 12_345, "SH-F1-01"),
           circle.REFUNDED: wx.circle_refund("5030001", TX, OPENID, 2_000, 12_345, "SH-F1-01")}[event_type]
    body = wx.notification(event_type, res)
    decoded = sdk(wx).callback(wx.headers(body), body)
    assert decoded is not None, "the SDK refused our notification"
    assert decoded["event_type"] == event_type and decoded["resource"] == res
    assert sdk(wx).callback(wx.headers(body, key=_new_key()), body) is None


def test_circle_payment_and_refund_map_to_the_ordinary_notifications_event_ids(
        wx: WeChatPaySimulator, wx_keys: wechatpay.WeChatPayKeys) -> None:
    body = wx.notification(circle.PAID, wx.circle_transaction(TX, OPENID, 12_345, "SH-F1-01",
                                                              time_end="2026-11-30T10:15:00+08:00"))
    note, res = _decrypted(wx, wx_keys, body)
    mapped = circle.to_event(circle.event_type_of(note), res, CONFIG.wechatpay)
    assert mapped.kind == "payment" and mapped.note == "wxd678efh567hg6787"
    assert mapped.event == {
        "event_id": f"wx:{TX}", "type": "payment", "occurred_at": "2026-11-30T10:15:00+08:00",
        "payer": {"kind": "wechat", "id": OPENID}, "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01",
        "category": "fashion", "amount_fen": 12_345, "channel": "wechatpay",
    }
    # The ordinary notification of the same transaction: the same event, so it earns once.
    ordinary = orjson.loads(wx.notification("TRANSACTION.SUCCESS", wx.transaction(TX, OPENID, 12_345)))
    assert wechatpay.to_event(ordinary, wechatpay.decrypt(ordinary, wx_keys), CONFIG.wechatpay).event["event_id"] \
        == mapped.event["event_id"]

    body = wx.notification(circle.REFUNDED, wx.circle_refund("50300000001", TX, OPENID, 2_000, 12_345, "SH-F1-01",
                                                             refund_time="2026-11-30T11:00:00+08:00"))
    note, res = _decrypted(wx, wx_keys, body)
    refund = circle.to_event(circle.event_type_of(note), res, CONFIG.wechatpay)
    assert refund.kind == "refund" and refund.note == OPENID
    assert refund.event == {"event_id": "wx-refund:50300000001", "type": "refund", "refund_of": f"wx:{TX}",
                            "occurred_at": "2026-11-30T11:00:00+08:00", "amount_fen": 2_000, "channel": "wechatpay"}
    ordinary = orjson.loads(wx.notification("REFUND.SUCCESS", wx.refund("50300000001", TX, 2_000, 12_345)))
    assert wechatpay.to_event(ordinary, wechatpay.decrypt(ordinary, wx_keys), CONFIG.wechatpay).event["event_id"] \
        == refund.event["event_id"]

    note, res = _decrypted(wx, wx_keys, wx.notification(circle.AUTHORIZED, wx.circle_authorization(
        OPENID, "m-0001", authorize_time="2026-11-30T09:00:00+08:00")))
    assert circle.event_type_of(note) == circle.AUTHORIZED
    assert circle.authorization(res) == circle.Authorization("1900000109", "wxd678efh567hg6787", OPENID, "m-0001",
                                                             "2026-11-30T09:00:00+08:00")


@pytest.mark.parametrize(
    ("change", "field", "status"),
    [({"shop_number": "NOWHERE"}, "shop_number", 503), ({"amount": 0}, "amount", 400),
     ({"amount": 12.5}, "amount", 400), ({"time_end": "2026-11-30 10:15:00"}, "time_end", 400),
     ({"time_end": "2026-11-30T10:15:00"}, "time_end", 400), ({"openid": ""}, "openid", 400),
     ({"transaction_id": None}, "transaction_id", 400)],
)
def test_bad_circle_payments_are_refused_naming_the_field(wx: WeChatPaySimulator, change: dict, field: str,
                                                          status: int) -> None:
    res = {**wx.circle_transaction(TX, OPENID, 100, "SH-F1-01"), **change}
    with pytest.raises(GatewayError) as caught:
        circle.to_event(circle.PAID, res, CONFIG.wechatpay)
    assert (caught.value.field, caught.value.status) == (field, status)


def test_bad_circle_refunds_and_authorisations_are_refused(wx: WeChatPaySimulator) -> None:
    with pytest.raises(GatewayError, match="refund_amount: 200 fen is more than the payment's 100"):
        circle.to_event(circle.REFUNDED, wx.circle_refund("r1", TX, OPENID, 200, 100, "SH-F1-01"), CONFIG.wechatpay)
    with pytest.raises(GatewayError, match="code: 'm 1' is not a member id"):
        circle.authorization(wx.circle_authorization(OPENID, "m 1"))
    assert circle.to_event("MALL_SOMETHING.ELSE", {}, CONFIG.wechatpay).kind == "ignored"


def test_our_request_signature_is_the_published_sdks(signer: circle.MerchantSigner, api: WeChatPayApi) -> None:
    """RSA PKCS#1 v1.5 is deterministic: for the same time and nonce, our Authorization header
    and the SDK's (wechatpayv3.utils.build_authorization) are the same string."""
    body = circle.points_sync_body(TX, "wxd678efh567hg6787", OPENID, 123, 1_796_004_900_000, "", 888)
    ts, nonce = int(time.time()), "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    ours = signer.authorization("POST", circle.POINTS_NOTIFY_PATH, body, timestamp=ts, nonce=nonce)
    with mock.patch("wechatpayv3.utils.time.time", return_value=float(ts)):
        theirs = build_authorization(circle.POINTS_NOTIFY_PATH, "POST", signer.mchid, signer.serial, signer.key,
                                     data=body.decode(), nonce_str=nonce)
    assert ours == theirs
    # The simulated API takes it, and refuses it for another body, path or key.
    headers = {"Authorization": ours}
    assert api.why_unsigned("POST", circle.POINTS_NOTIFY_PATH, headers, body) is None
    assert api.why_unsigned("POST", circle.POINTS_NOTIFY_PATH, headers, body.replace(b"123", b"124")) is not None
    assert api.why_unsigned("POST", circle.PARKINGS_PATH, headers, body) is not None
    other = circle.MerchantSigner(signer.mchid, signer.serial, _new_key(), signer.api_base)
    forged = {"Authorization": other.authorization("POST", circle.POINTS_NOTIFY_PATH, body)}
    assert api.why_unsigned("POST", circle.POINTS_NOTIFY_PATH, forged, body) == \
        "signature does not verify with the merchant's key"


def test_sync_bodies_are_what_the_api_takes(api: WeChatPayApi) -> None:
    earned = orjson.loads(circle.points_sync_body(TX, "wx1", OPENID, 123, 1_796_004_900_000, "", 888))
    assert earned == {"transaction_id": TX, "appid": "wx1", "openid": OPENID, "earn_points": True,
                      "increased_points": 123, "points_update_time": "2026-11-30T10:15:00.000+08:00",
                      "total_points": 888}
    assert api.why_bad_body(circle.POINTS_NOTIFY_PATH, earned) is None
    nothing = orjson.loads(circle.points_sync_body(TX, "wx1", OPENID, 0, 1_796_004_900_000, "本单不积分", None))
    assert nothing["earn_points"] is False and nothing["increased_points"] == 0
    assert nothing["no_points_remarks"] == "本单不积分" and "total_points" not in nothing
    assert api.why_bad_body(circle.POINTS_NOTIFY_PATH, nothing) is None
    assert api.why_bad_body(circle.POINTS_NOTIFY_PATH, {**nothing, "no_points_remarks": ""}) is not None
    assert api.why_bad_body(circle.POINTS_NOTIFY_PATH, {**earned, "increased_points": "123"}) is not None
    parking = orjson.loads(circle.parking_sync_body("wx1", OPENID, 1000, "沪A12345", "IN", "2026-11-30T10:15:00+08:00"))
    assert api.why_bad_body(circle.PARKINGS_PATH, parking) is None
    assert api.why_bad_body(circle.PARKINGS_PATH, {**parking, "state": "PARKED"}) is not None


def test_merchant_signer_configuration(tmp_path: Path) -> None:
    assert circle.MerchantSigner.from_settings("", "", "", "https://api.mch.weixin.qq.com") is None
    with pytest.raises(ValueError, match="needed together"):
        circle.MerchantSigner.from_settings("1900000109", "", "", "https://api.mch.weixin.qq.com")
    with pytest.raises(ValueError, match="cannot read"):
        circle.MerchantSigner.from_settings("1900000109", str(tmp_path / "none.pem"), "S1", "https://x")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM private key"):
        circle.MerchantSigner.from_settings("1900000109", str(bad), "S1", "https://x")


@pytest.mark.parametrize(
    ("entry", "message"),
    [('shop_number = "S1"\nbu_id = "sh-mall"\nmerchant_id = "x"\ncategory = "food"\nfloor = 1',
      r"circle_shops\[0\]: unknown field\(s\) \['floor'\]"),
     ('shop_number = "S1"\nbu_id = "sh-mall"\nmerchant_id = "x"', r"circle_shops\[0\]\.category: required"),
     ('shop_number = "S1"\nbu_id = "sh-mall"\nmerchant_id = "a b"\ncategory = "food"',
      r"circle_shops\[0\]\.merchant_id: 'a b' is not a valid id"),
     ('shop_number = "S1"\nbu_id = "nowhere"\nmerchant_id = "x"\ncategory = "food"',
      r"circle_shops\[0\]\.bu_id: 'nowhere' is not a business unit")],
)
def test_circle_shops_errors_name_the_file_and_entry(entry: str, message: str) -> None:
    with pytest.raises(GatewayConfigError, match=r"g\.toml: wechatpay\." + message):
        parse_config(f"[[wechatpay.circle_shops]]\n{entry}\n", "g.toml", {"sh-mall"})


def test_a_shop_listed_twice_and_circle_shops_under_alipay_are_refused() -> None:
    one = '[[wechatpay.circle_shops]]\nshop_number = "S1"\nbu_id = "sh-mall"\nmerchant_id = "x"\ncategory = "food"\n'
    with pytest.raises(GatewayConfigError, match=r"circle_shops\[1\]: a second entry for shop_number 'S1'"):
        parse_config(one + one, "g.toml")
    with pytest.raises(GatewayConfigError, match=r"alipay: unknown field\(s\) \['circle_shops'\]"):
        parse_config(one.replace("wechatpay", "alipay"), "g.toml")
    shops = parse_config(one, "g.toml").wechatpay.circle_shops
    assert {k: vars(v) for k, v in shops.items()} == {"S1": {"bu_id": "sh-mall", "merchant_id": "x",
                                                            "category": "food"}}
