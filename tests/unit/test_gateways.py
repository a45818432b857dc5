"""WeChat Pay v3 and Alipay notifications: our fixtures are checked with the gateways'
published SDKs (so they are the real formats), then our verification, decryption
and mapping are tested against them, including every way to refuse one."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import pytest
from alipay import AliPay
from wechatpayv3 import WeChatPay, WeChatPayType

from devtools.gateways import AlipaySimulator, WeChatPaySimulator, _new_key, private_pem, public_pem
from streams.gateways import GatewayError, alipay, load_rsa_public_key, wechatpay
from streams.gateways.mapping import GatewayConfigError, load_config, parse_config
from streams.settings import ROOT

CONFIG = load_config(ROOT / "rules" / "gateways.toml")


@pytest.fixture(scope="module")
def ali() -> AlipaySimulator:
    return AlipaySimulator()


def sdk_wechatpay(wx: WeChatPaySimulator) -> WeChatPay:
    """The published SDK, as a merchant would set it up (public key mode: no download)."""
    merchant = _new_key()
    return WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid="1900000109", private_key=private_pem(merchant),
                     cert_serial_no="444F4864EA9B34415", appid="wxd678efh567hg6787", apiv3_key=wx.apiv3_key,
                     public_key=public_pem(wx.platform_key), public_key_id=wx.serial)


# ---- WeChat Pay v3 -------------------------------------------------------------------


def test_wechatpay_fixture_is_what_the_published_sdk_accepts(wx: WeChatPaySimulator) -> None:
    res = wx.transaction("4200000001202611230000000001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", 12_345)
    body = wx.notification("TRANSACTION.SUCCESS", res)
    decoded = sdk_wechatpay(wx).callback(wx.headers(body), body)
    assert decoded is not None, "the SDK refused our notification"
    assert decoded["event_type"] == "TRANSACTION.SUCCESS"
    assert decoded["resource"] == res
    # And the SDK refuses what our verifier refuses: another key signed it.
    assert sdk_wechatpay(wx).callback(wx.headers(body, key=_new_key()), body) is None


def test_wechatpay_payment_maps_to_our_event(wx: WeChatPaySimulator, wx_keys: wechatpay.WeChatPayKeys) -> None:
    res = wx.transaction("4200000001202611230000000002", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", 12_345,
                         success_time="2026-11-23T10:15:00+08:00")
    body = wx.notification("TRANSACTION.SUCCESS", res)
    wechatpay.verify(wx.headers(body), body, wx_keys, time.time(), 300)
    note = orjson.loads(body)
    mapped = wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay)
    assert mapped.kind == "payment"
    assert mapped.event == {
        "event_id": "wx:4200000001202611230000000002", "type": "payment", "occurred_at": "2026-11-23T10:15:00+08:00",
        "payer": {"kind": "wechat", "id": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}, "bu_id": "sh-mall",
        "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 12_345, "channel": "wechatpay",
    }


def test_wechatpay_partner_mode_attach_and_refund(wx: WeChatPaySimulator, wx_keys: wechatpay.WeChatPayKeys) -> None:
    partner = wx.transaction("4200000001202611230000000003", "o-sp-openid", 50_000, mchid="1900000100",
                             sub_mchid="1900000201")
    note = orjson.loads(wx.notification("TRANSACTION.SUCCESS", partner))
    ev = wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay).event
    assert (ev["bu_id"], ev["merchant_id"], ev["payer"]["id"]) == ("sh-hotel", "sh-hotel-rooms", "o-sp-openid")

    attached = wx.transaction("4200000001202611230000000004", "o1", 800,
                              attach="bu_id=sh-cvs&merchant_id=sh-cvs-01&category=grocery")
    note = orjson.loads(wx.notification("TRANSACTION.SUCCESS", attached))
    ev = wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay).event
    assert (ev["bu_id"], ev["merchant_id"], ev["category"]) == ("sh-cvs", "sh-cvs-01", "grocery")
    assert "mall_order" not in ev

    # The cash part of a points + cash order: the attach names the order (docs/points-mall.md).
    for attach, want in (("mall_order=ord-1a2b", {"mall_order": "ord-1a2b"}), ("mall_order=a%7Bb", None)):
        paid = wx.transaction("4200000001202611230000000005", "o1", 9_900, attach=attach)
        note = orjson.loads(wx.notification("TRANSACTION.SUCCESS", paid))
        if want is None:
            with pytest.raises(GatewayError, match="mall_order"):
                wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay)
        else:
            ev = wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay).event
            assert ev["mall_order"] == want["mall_order"] and ev["bu_id"] == "sh-mall"

    refund = wx.refund("50000000382019052709732678859", "4200000001202611230000000003", 20_000, 50_000)
    note = orjson.loads(wx.notification("REFUND.SUCCESS", refund))
    mapped = wechatpay.to_event(note, wechatpay.decrypt(note, wx_keys), CONFIG.wechatpay)
    assert mapped.kind == "refund"
    assert mapped.event["event_id"] == "wx-refund:50000000382019052709732678859"
    assert mapped.event["refund_of"] == "wx:4200000001202611230000000003"
    assert mapped.event["amount_fen"] == 20_000


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("bad signature", "Wechatpay-Signature"),
        ("stale timestamp", "Wechatpay-Timestamp"),
        ("wrong serial", "Wechatpay-Serial"),
        ("body changed after signing", "Wechatpay-Signature"),
        ("tampered ciphertext", "resource.ciphertext"),
        ("another APIv3 key", "resource.ciphertext"),
        ("missing nonce", "Wechatpay-Nonce"),
    ],
)
def test_wechatpay_rejections(case: str, field: str, wx: WeChatPaySimulator,
                              wx_keys: wechatpay.WeChatPayKeys) -> None:
    res = wx.transaction("4200000001202611230000000009", "o1", 100)
    body = wx.notification("TRANSACTION.SUCCESS", res)
    headers = wx.headers(body)
    if case == "bad signature":
        headers = wx.headers(body, key=_new_key())
    elif case == "stale timestamp":
        headers = wx.headers(body, timestamp=int(time.time()) - 3600)
    elif case == "wrong serial":
        headers = wx.headers(body, serial="PUB_KEY_ID_NOT_OURS")
    elif case == "body changed after signing":
        body = body.replace(b'"summary"', b'"summary" ')
    elif case == "missing nonce":
        del headers["Wechatpay-Nonce"]
    elif case == "tampered ciphertext":
        note = orjson.loads(body)
        ct = bytearray(base64.b64decode(note["resource"]["ciphertext"]))
        ct[3] ^= 1
        note["resource"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
        body = orjson.dumps(note)
        headers = wx.headers(body)  # signed by the gateway, yet the ciphertext does not authenticate
    elif case == "another APIv3 key":
        body = wx.notification("TRANSACTION.SUCCESS", res, apiv3_key="0" * 32)
        headers = wx.headers(body)
    with pytest.raises(GatewayError) as err:
        wechatpay.verify(headers, body, wx_keys, time.time(), 300)
        wechatpay.decrypt(orjson.loads(body), wx_keys)
    assert err.value.field == field
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("resource_change", "field"),
    [
        ({"amount": {"total": 100, "payer_total": 150, "currency": "CNY"}}, "amount.payer_total"),
        ({"amount": {"total": "100", "currency": "CNY"}}, "amount.total"),
        ({"amount": {"total": 100, "currency": "USD"}}, "amount.currency"),
        ({"mchid": "1999999999"}, "route"),
        ({"payer": {}}, "payer.openid"),
    ],
)
def test_wechatpay_amount_and_mapping_errors(resource_change: dict[str, object], field: str,
                                             wx: WeChatPaySimulator) -> None:
    res = {**wx.transaction("4200000001202611230000000010", "o1", 100), **resource_change}
    with pytest.raises(GatewayError) as err:
        wechatpay.to_event({"event_type": "TRANSACTION.SUCCESS"}, res, CONFIG.wechatpay)
    assert err.value.field == field


def test_wechatpay_refund_larger_than_the_order_and_non_payment_events(wx: WeChatPaySimulator) -> None:
    with pytest.raises(GatewayError, match="more than the order total"):
        wechatpay.to_event({"event_type": "REFUND.SUCCESS"}, wx.refund("r1", "t1", 200, 100), CONFIG.wechatpay)
    closed = {**wx.refund("r1", "t1", 50, 100), "refund_status": "CLOSED"}
    assert wechatpay.to_event({"event_type": "REFUND.CLOSED"}, closed, CONFIG.wechatpay).kind == "ignored"
    assert wechatpay.to_event({"event_type": "MARKETING.X"}, {}, CONFIG.wechatpay).kind == "ignored"


def test_wechatpay_keys_configuration_errors(tmp_path: Path) -> None:
    assert wechatpay.WeChatPayKeys.from_settings("", "") is None
    with pytest.raises(ValueError, match="32-character"):
        wechatpay.WeChatPayKeys.from_settings("short", "S=/x.pem")
    with pytest.raises(ValueError, match="cannot read"):
        wechatpay.WeChatPayKeys.from_settings("k" * 32, f"S={tmp_path / 'missing.pem'}")
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM public key"):
        wechatpay.WeChatPayKeys.from_settings("k" * 32, f"S={tmp_path / 'bad.pem'}")


# ---- Alipay ----------------------------------------------------------------------------


def sdk_alipay(ali: AlipaySimulator) -> AliPay:
    return AliPay(appid=ali.app_id, app_notify_url=None, app_private_key_string=private_pem(_new_key()),
                  alipay_public_key_string=public_pem(ali.alipay_key), sign_type="RSA2")


def test_alipay_fixture_is_what_the_published_sdk_accepts(ali: AlipaySimulator) -> None:
    signed = ali.sign(ali.trade("2026112322001400000000000001", "2088102177846880", "123.45"))
    # As the SDK's docs say: parse the POSTed form, pop `sign`, verify the rest.
    data = dict(parse_qsl(AlipaySimulator.body(signed).decode(), keep_blank_values=True))
    signature = data.pop("sign")
    assert sdk_alipay(ali).verify(data, signature) is True
    forged = ali.sign(ali.trade("2026112322001400000000000001", "2088102177846880", "123.45"), key=_new_key())
    data = dict(forged)
    assert sdk_alipay(ali).verify(data, data.pop("sign")) is False


def test_alipay_payment_and_cumulative_refunds_map_exactly(ali: AlipaySimulator) -> None:
    key = load_rsa_public_key(public_pem(ali.alipay_key).encode(), "alipay")
    trade = ali.trade("2026112322001400000000000002", "2088102177846880", "0.10", gmt_payment="2026-11-23 10:15:00")
    params = alipay.parse_form(AlipaySimulator.body(ali.sign(trade)))
    alipay.verify(params, key)
    ev = alipay.to_event(params, CONFIG.alipay).event
    assert ev["event_id"] == "ali:2026112322001400000000000002"
    assert ev["amount_fen"] == 10  # "0.10" yuan, exactly
    assert ev["occurred_at"] == "2026-11-23T10:15:00+08:00"
    assert (ev["bu_id"], ev["merchant_id"], ev["payer"]) == ("sh-mall", "sh-mall-shop-02",
                                                            {"kind": "alipay", "id": "2088102177846880"})
    refund = alipay.to_event(ali.refund(trade, "RF-1", "0.03"), CONFIG.alipay)
    assert refund.kind == "refund"
    assert refund.event["cumulative"] is True and refund.event["amount_fen"] == 3
    assert refund.event["refund_of"] == ev["event_id"]
    assert alipay.to_event(ali.refund(trade, "RF-2", "0.10", closed=True), CONFIG.alipay).event["amount_fen"] == 10
    finished = alipay.to_event({**trade, "trade_status": "TRADE_FINISHED"}, CONFIG.alipay)
    assert finished.event["event_id"] == ev["event_id"]  # the same payment: a duplicate downstream
    seller = alipay.to_event({**trade, "seller_id": "2088000000000003"}, CONFIG.alipay).event
    assert seller["bu_id"] == "sh-cvs"


@pytest.mark.parametrize(
    ("value", "fen"),
    [("0.01", 1), ("1", 100), ("1.5", 150), ("12345678.99", 1_234_567_899), ("0", 0)],
)
def test_yuan_strings_convert_to_fen_exactly(value: str, fen: int) -> None:
    assert alipay.yuan_to_fen("total_amount", value) == fen


@pytest.mark.parametrize("value", ["1.005", "-1.00", "1e3", "01.00", " 1.00", "1,00", "", "NaN", "1.", ".5"])
def test_bad_yuan_strings_are_refused(value: str) -> None:
    with pytest.raises(GatewayError):
        alipay.yuan_to_fen("total_amount", value)


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("bad signature", "sign"),
        ("amount changed after signing", "sign"),
        ("RSA (SHA1) sign type", "sign_type"),
        ("no sign", "sign"),
        ("refund larger than the trade", "refund_fee"),
        ("receipt larger than the total", "receipt_amount"),
        ("unknown app", "route"),
        ("duplicate parameter", "trade_no"),
        ("bad amount", "total_amount"),
    ],
)
def test_alipay_rejections(case: str, field: str, ali: AlipaySimulator) -> None:
    key = load_rsa_public_key(public_pem(ali.alipay_key).encode(), "alipay")
    trade = ali.trade("2026112322001400000000000003", "2088102177846880", "50.00")
    signed = ali.sign(trade)
    body = AlipaySimulator.body(signed)
    if case == "bad signature":
        body = AlipaySimulator.body(ali.sign(trade, key=_new_key()))
    elif case == "amount changed after signing":
        body = AlipaySimulator.body({**signed, "total_amount": "5000.00"})
    elif case == "RSA (SHA1) sign type":
        body = AlipaySimulator.body({**signed, "sign_type": "RSA"})
    elif case == "no sign":
        body = AlipaySimulator.body({k: v for k, v in signed.items() if k != "sign"})
    elif case == "refund larger than the trade":
        body = AlipaySimulator.body(ali.sign(ali.refund(trade, "RF-9", "50.01")))
    elif case == "receipt larger than the total":
        body = AlipaySimulator.body(ali.sign({**trade, "receipt_amount": "60.00"}))
    elif case == "unknown app":
        body = AlipaySimulator.body(ali.sign({**trade, "app_id": "2021999999999999"}))
    elif case == "duplicate parameter":
        body += b"&trade_no=2026112322001400000000000099"
    elif case == "bad amount":
        body = AlipaySimulator.body(ali.sign({**trade, "total_amount": "50.001"}))
    with pytest.raises(GatewayError) as err:
        params = alipay.parse_form(body)
        alipay.verify(params, key)
        alipay.to_event(params, CONFIG.alipay)
    assert err.value.field == field


def test_alipay_gbk_charset_and_not_paid_yet(ali: AlipaySimulator) -> None:
    trade = {**ali.trade("2026112322001400000000000004", "2088102177846880", "9.90"), "charset": "gbk",
             "subject": "便利店"}
    body = AlipaySimulator.body(ali.sign(trade))
    assert b"%B1%E3" in body  # 便 in GBK, as Alipay sends it
    params = alipay.parse_form(body)
    assert params["subject"] == "便利店"
    alipay.verify(params, load_rsa_public_key(public_pem(ali.alipay_key).encode(), "alipay"))
    waiting = alipay.to_event({**trade, "trade_status": "WAIT_BUYER_PAY"}, CONFIG.alipay)
    assert waiting.kind == "ignored"


# ---- Mapping config --------------------------------------------------------------------


def test_the_shipped_gateways_file_loads_against_the_demo_rules() -> None:
    import core_ext

    rules = core_ext.RuleSet.from_toml((ROOT / "rules" / "demo.toml").read_text())
    config = load_config(ROOT / "rules" / "gateways.toml", {bu for bu, _ in rules.business_units})
    assert config.wechatpay.routes and config.alipay.routes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[wechatpay]\nroutes = [{mchid = "1", bu_id = "sh-mall", merchant_id = "m"}]', "category: required"),
        ('[wechatpay]\nroutes = [{mchid = "1", bu_id = "nope", merchant_id = "m", category = "c"}]',
         "not a business unit"),
        ('[alipay]\nroutes = [{app_id = "1", bu_id = "sh-mall", merchant_id = "m", category = "c", x = 1}]',
         "unknown field"),
        ('[wechatpay]\nroutes = [{mchid = "1", bu_id = "sh-mall", merchant_id = "m", category = "c"},'
         '{mchid = "1", bu_id = "sh-mall", merchant_id = "m", category = "c"}]', "a second route"),
        ("[paypal]\n", "unknown section"),
        ("[wechatpay\n", "gateways.toml"),
    ],
)
def test_gateways_file_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(GatewayConfigError, match=message):
        parse_config(text, "gateways.toml", {"sh-mall"})


def test_a_worker_leaves_out_routes_to_unknown_business_units_and_check_refuses_them() -> None:
    text = ('[wechatpay]\nroutes = [{mchid = "1", bu_id = "gone", merchant_id = "m", category = "c"},'
            '{mchid = "2", bu_id = "sh-mall", merchant_id = "m", category = "c"}]')
    config = parse_config(text, "gateways.toml", {"sh-mall"}, lenient=True)
    assert list(config.wechatpay.routes) == [("2", "")]
    with pytest.raises(GatewayError) as err:
        config.wechatpay.route("1", "", None)
    assert (err.value.field, err.value.status, err.value.unrouted) == ("route", 503, "1")
    with pytest.raises(GatewayConfigError):
        parse_config(text, "gateways.toml", {"sh-mall"})
