"""WeChat Pay v3 and Alipay notifications, posted to a running worker over real Kafka,
Redis and ClickHouse, exactly as the gateways send them (the fixtures are checked
with the published SDKs in tests/unit/test_gateways.py).

Each gateway payment is compared with the same payment sent through our own signed
JSON callback for a twin member: same points, same clawbacks, whatever the gateway's
retries and refund order."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.gateways import AlipaySimulator, WeChatPaySimulator, _new_key, simulators
from devtools.workers import WorkerProcess, read_dead_letters
from streams.settings import ROOT, Settings
from streams.signing import signed_headers
from tests.integration.conftest import new_worker

pytestmark = pytest.mark.integration
AT = "2026-11-23T10:15:00+08:00"


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-keys")


@pytest.fixture(scope="module")
def sims(sim_dir: Path) -> tuple[WeChatPaySimulator, AlipaySimulator, dict[str, str]]:
    return simulators(sim_dir)


@pytest.fixture(scope="module")
def gw(services: None, sims: tuple[Any, Any, dict[str, str]],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = new_worker(tmp_path_factory.mktemp("gw"), "gateways", **sims[2])
    w.start()
    yield w
    w.stop()


def register(w: WorkerProcess, kind: str | None = None, external_id: str | None = None) -> str:
    m = f"m-{uuid.uuid4().hex[:10]}"
    reg: dict[str, Any] = {"event_id": f"reg-{m}", "type": "register", "occurred_at": "2026-11-23T09:00:00+08:00",
                           "member_id": m}
    if kind:
        reg["external_ids"] = [{"kind": kind, "id": external_id}]
    body = orjson.dumps(reg)
    assert w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[0] == 200, timeout=60, what=f"registration of {m}")
    return m


def member(w: WorkerProcess, m: str) -> dict[str, Any]:
    status, body = w.get(f"/v1/members/{m}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_events(w: WorkerProcess, m: str, n: int) -> dict[str, Any]:
    w.wait_until(lambda: member(w, m)["events"] >= n, timeout=60, what=f"{n} events of {m}")
    w.wait_caught_up()  # anything more that was coming has landed (a duplicate must not)
    return member(w, m)


def twin_payment(m: str, event_id: str, amount: int, bu: str, merchant: str, category: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": "payment", "occurred_at": AT, "member_id": m, "bu_id": bu,
            "merchant_id": merchant, "category": category, "amount_fen": amount, "channel": "wechat"}


def twin_refund(pay: dict[str, Any], event_id: str, amount: int) -> dict[str, Any]:
    return {**pay, "event_id": event_id, "type": "refund", "refund_of": pay["event_id"], "amount_fen": amount}


def post_wechat(w: WorkerProcess, wx: WeChatPaySimulator, body: bytes, **headers: Any) -> tuple[int, Any]:
    return w.post("/v1/callbacks/wechatpay", body, wx.headers(body, **headers))


def post_alipay(w: WorkerProcess, params: dict[str, str]) -> tuple[int, Any]:
    return w.post("/v1/callbacks/alipay", AlipaySimulator.body(params),
                  {"Content-Type": "application/x-www-form-urlencoded"})


def dead_letters(w: WorkerProcess, marker: str) -> list[dict[str, Any]]:
    records = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{w.run_id}.dead-letter"))
    return [r for r in records if marker in (r.get("body") or "")]


def test_wechatpay_payment_refunds_and_retries_count_once(gw: WorkerProcess, sims: Any) -> None:
    wx: WeChatPaySimulator = sims[0]
    openid = f"o{uuid.uuid4().hex[:27]}"
    m, twin = register(gw, "wechat", openid), register(gw)
    base = member(gw, m)["balance"]
    tx = f"42000{uuid.uuid4().int % 10**27:027d}"
    pay = wx.notification("TRANSACTION.SUCCESS", wx.transaction(tx, openid, 12_345, success_time=AT))
    for _ in range(3):  # WeChat Pay retries until it gets a 2xx; each retry is signed anew
        assert post_wechat(gw, wx, pay) == (204, None)
    ref = twin_payment(twin, f"twin-{tx}", 12_345, "sh-mall", "sh-mall-shop-01", "fashion")
    assert gw.send_callback(ref)[0] == 202
    got, want = wait_events(gw, m, 2), wait_events(gw, twin, 2)
    assert got["balance"] - base == want["balance"] - base > 0
    assert got["events"] == 2
    assert got["recent_movements"][0]["event_id"] == f"wx:{tx}"

    # Two partial refunds (each retried) and a refund that is not ours to apply twice.
    for i, amount in enumerate((2_000, 10_345)):
        refund_id = f"5030{uuid.uuid4().int % 10**26:026d}"
        note = wx.notification("REFUND.SUCCESS", wx.refund(refund_id, tx, amount, 12_345, success_time=AT))
        assert post_wechat(gw, wx, note) == (204, None)
        assert post_wechat(gw, wx, note) == (204, None)
        assert gw.send_callback(twin_refund(ref, f"twin-rf-{i}-{tx}", amount))[0] == 202
        got, want = wait_events(gw, m, 3 + i), wait_events(gw, twin, 3 + i)
        assert got["balance"] == want["balance"], (i, got, want)
    assert got["balance"] == base  # refunded in full: every point of the payment taken back
    gw.wait_until(lambda: gw.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=60,
                  what="Redis, wallet and ledger to agree")


@pytest.mark.parametrize(
    ("case", "status"),
    [("bad signature", 401), ("stale timestamp", 401), ("wrong serial", 401), ("tampered ciphertext", 401),
     ("unknown merchant", 503), ("refund of an unseen payment", 503)],
)
def test_wechatpay_refusals_are_retried_dead_lettered_and_change_nothing(
        gw: WorkerProcess, sims: Any, case: str, status: int) -> None:
    wx: WeChatPaySimulator = sims[0]
    openid = f"o{uuid.uuid4().hex[:27]}"
    m = register(gw, "wechat", openid)
    before = member(gw, m)
    tx = f"42000{uuid.uuid4().int % 10**27:027d}"
    res = wx.transaction(tx, openid, 5_000, success_time=AT)
    body = wx.notification("TRANSACTION.SUCCESS", res)
    headers: dict[str, Any] = {}
    if case == "bad signature":
        headers = {"key": _new_key()}
    elif case == "stale timestamp":
        headers = {"timestamp": int(time.time()) - 3_600}
    elif case == "wrong serial":
        headers = {"serial": "PUB_KEY_ID_0000"}
    elif case == "tampered ciphertext":
        note = orjson.loads(body)
        ct = note["resource"]["ciphertext"]
        note["resource"]["ciphertext"] = ("B" if ct[0] == "A" else "A") + ct[1:]
        body = orjson.dumps(note)
    elif case == "unknown merchant":
        body = wx.notification("TRANSACTION.SUCCESS", {**res, "mchid": "1999999999"})
    elif case == "refund of an unseen payment":
        body = wx.notification("REFUND.SUCCESS", wx.refund(f"50{tx}", tx, 100, 5_000))
    code, reply = post_wechat(gw, wx, body, **headers)
    assert code == status
    assert reply["code"] == "FAIL" and reply["message"]
    marker = orjson.loads(body)["id"]
    gw.wait_until(lambda: len(dead_letters(gw, marker)) == 1, timeout=30, what=f"the dead letter of {case}")
    letter = dead_letters(gw, marker)[0]
    assert letter["source"] == "wechatpay" and letter["reason"] == reply["message"]
    gw.wait_caught_up()  # the refused notification changed nothing, even later
    assert member(gw, m)["balance"] == before["balance"]
    assert member(gw, m)["events"] == before["events"]


def test_alipay_payment_cumulative_refunds_out_of_order_and_retries(gw: WorkerProcess, sims: Any) -> None:
    ali: AlipaySimulator = sims[1]
    buyer = f"2088{uuid.uuid4().int % 10**12:012d}"
    m, twin = register(gw, "alipay", buyer), register(gw)
    base = member(gw, m)["balance"]
    trade_no = f"2026112322{uuid.uuid4().int % 10**18:018d}"
    trade = ali.trade(trade_no, buyer, "123.45", gmt_payment="2026-11-23 10:15:00")
    assert post_alipay(gw, ali.sign(trade)) == (200, "success")
    assert post_alipay(gw, ali.sign(trade)) == (200, "success")  # Alipay's retry
    finished = {**trade, "trade_status": "TRADE_FINISHED", "notify_id": uuid.uuid4().hex}
    assert post_alipay(gw, ali.sign(finished)) == (200, "success")  # the same payment, later status
    ref = twin_payment(twin, f"twin-{trade_no}", 12_345, "sh-mall", "sh-mall-shop-02", "food")
    assert gw.send_callback(ref)[0] == 202
    got, want = wait_events(gw, m, 2), wait_events(gw, twin, 2)
    assert got["balance"] - base == want["balance"] - base > 0 and got["events"] == 2

    # Refund 2 (refunded total 100.00) arrives before refund 1 (total 20.00): 100.00 is taken
    # back at once, refund 1 is covered already. Then the full refund closes the trade.
    later = ali.refund(trade, "RF-2", "100.00", gmt_refund="2026-11-23 11:00:00.000")
    earlier = ali.refund(trade, "RF-1", "20.00", gmt_refund="2026-11-23 10:30:00.000")
    assert post_alipay(gw, ali.sign(later)) == (200, "success")
    assert post_alipay(gw, ali.sign(earlier)) == (200, "success")
    assert post_alipay(gw, ali.sign(later)) == (200, "success")
    assert gw.send_callback(twin_refund(ref, f"twin-rf-{trade_no}", 10_000))[0] == 202
    got, want = wait_events(gw, m, 3), wait_events(gw, twin, 3)
    assert got["balance"] == want["balance"]
    closed = ali.refund(trade, "RF-3", "123.45", closed=True)
    assert post_alipay(gw, ali.sign(closed)) == (200, "success")
    assert post_alipay(gw, ali.sign(closed)) == (200, "success")
    got = wait_events(gw, m, 4)
    assert got["balance"] == base and got["events"] == 4
    gw.wait_until(lambda: gw.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=60,
                  what="Redis, wallet and ledger to agree")


@pytest.mark.parametrize(
    ("case", "status"),
    [("bad signature", 401), ("amount changed after signing", 401), ("refund larger than the trade", 400),
     ("unknown app", 503), ("not a form", 400)],
)
def test_alipay_refusals_answer_fail_and_change_nothing(gw: WorkerProcess, sims: Any, case: str,
                                                        status: int) -> None:
    ali: AlipaySimulator = sims[1]
    buyer = f"2088{uuid.uuid4().int % 10**12:012d}"
    m = register(gw, "alipay", buyer)
    before = member(gw, m)
    trade_no = f"2026112322{uuid.uuid4().int % 10**18:018d}"
    trade = ali.trade(trade_no, buyer, "50.00")
    signed = ali.sign(trade)
    body = AlipaySimulator.body(signed)
    if case == "bad signature":
        body = AlipaySimulator.body(ali.sign(trade, key=_new_key()))
    elif case == "amount changed after signing":
        body = AlipaySimulator.body({**signed, "total_amount": "5000.00"})
    elif case == "refund larger than the trade":
        body = AlipaySimulator.body(ali.sign(ali.refund(trade, "RF-9", "50.01")))
    elif case == "unknown app":
        body = AlipaySimulator.body(ali.sign({**trade, "app_id": "2021999999999999"}))
    elif case == "not a form":
        body = orjson.dumps({"trade_no": trade_no})
    code, reply = gw.post("/v1/callbacks/alipay", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert (code, reply) == (status, "fail")
    gw.wait_until(lambda: len(dead_letters(gw, trade_no)) == 1, timeout=30, what=f"the dead letter of {case}")
    assert dead_letters(gw, trade_no)[0]["source"] == "alipay"
    gw.wait_caught_up()  # the refused notification changed nothing, even later
    assert member(gw, m)["balance"] == before["balance"] and member(gw, m)["events"] == before["events"]


def test_alipay_refund_naming_another_payer_is_refused_at_the_ingress(gw: WorkerProcess, sims: Any) -> None:
    """The ingress knows an Alipay payment's route: a refund of it naming another buyer is
    answered 400 (fail) and dead-lettered naming the field, and moves nothing."""
    ali: AlipaySimulator = sims[1]
    buyer, stranger = (f"2088{uuid.uuid4().int % 10**12:012d}" for _ in range(2))
    m = register(gw, "alipay", buyer)
    register(gw, "alipay", stranger)
    base, events = member(gw, m)["balance"], member(gw, m)["events"]
    trade_no = f"2026112322{uuid.uuid4().int % 10**18:018d}"
    trade = ali.trade(trade_no, buyer, "88.00")
    assert post_alipay(gw, ali.sign(trade)) == (200, "success")
    paid = wait_events(gw, m, events + 1)
    assert paid["balance"] > base
    wrong = ali.refund({**trade, "buyer_id": stranger}, "RF-X", "88.00")
    assert post_alipay(gw, ali.sign(wrong)) == (400, "fail")
    gw.wait_until(lambda: len(dead_letters(gw, trade_no)) == 1, timeout=30, what="the dead letter")
    letter = dead_letters(gw, trade_no)[0]
    assert letter["source"] == "alipay" and letter["field"] == "payer", letter
    assert stranger in letter["reason"] and buyer in letter["reason"], letter
    # The same refund from the right buyer is taken, and is the only refund applied.
    assert post_alipay(gw, ali.sign(ali.refund(trade, "RF-X", "88.00"))) == (200, "success")
    got = wait_events(gw, m, events + 2)
    assert got["balance"] == base and got["events"] == events + 2


def test_unconfigured_gateways_are_refused_so_they_retry(services: None, tmp_path: Path) -> None:
    w = new_worker(tmp_path, "nogw")
    w.start()
    try:
        wx = WeChatPaySimulator()
        body = wx.notification("TRANSACTION.SUCCESS", wx.transaction("4200", "o1", 100))
        code, reply = post_wechat(w, wx, body)
        assert code == 503 and reply["code"] == "FAIL"
        assert w.post("/v1/callbacks/alipay", b"a=1", {})[0] == 503
    finally:
        w.stop()


def test_locust_gateway_users_run_without_failures(gw: WorkerProcess, sim_dir: Path, tmp_path: Path) -> None:
    """The load test's WeChat Pay and Alipay users, headless for a few seconds: every
    notification is answered as the gateway expects, and all of them reach the worker."""
    before = gw.metrics()
    report = tmp_path / "locust"  # locust adds .json
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
         "-H", gw.base_url, "-u", "4", "-r", "4", "-t", "4s", "-s", "5", "--only-summary",
         "--json-file", str(report), "WeChatPayNotifications", "AlipayNotifications"],
        cwd=ROOT, env={**os.environ, "LOYALTY_GATEWAY_SIM_DIR": str(sim_dir)}, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = orjson.loads(report.with_suffix(".json").read_bytes())
    requests = sum(s["num_requests"] for s in stats)
    failures = sum(s["num_failures"] for s in stats)
    assert requests > 20 and failures == 0, proc.stderr[-3000:]
    after = gw.metrics()
    accepted = sum(after[f"gateway_{g}_{k}_total"] - before[f"gateway_{g}_{k}_total"]
                   for g in ("wechatpay", "alipay") for k in ("payment", "refund"))
    assert accepted == requests  # retries are accepted again (same event id), refusals would have failed


def test_redis_holds_only_keys_of_known_families_each_bounded(gw: WorkerProcess) -> None:
    """After this module's traffic: every key described in streams/state/keys.py, and each
    one of a family that grows per event or request carrying its expiry."""
    assert gw.keys_out_of_bounds() == []
