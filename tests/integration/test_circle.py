"""WeChat Pay smart business circle (智慧商圈) over real Kafka, Redis and ClickHouse: the
simulated WeChat Pay sends signed, encrypted authorisation, payment and refund
notifications to a worker, and serves the points-sync and parking-sync API, checking each
call's signature and body (devtools/gateways.py; the signature also against the published
SDK here). A twin member paid through our own signed callback says what the points are."""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
import redis
from wechatpayv3.utils import build_authorization

from devtools.gateways import WeChatPayApi, WeChatPaySimulator, simulators
from devtools.workers import WorkerProcess
from streams.gateways.circle import AUTHORIZED, PAID, POINTS_NOTIFY_PATH, REFUNDED
from streams.signing import signed_headers
from tests.integration.conftest import new_worker
from tests.integration.test_gateways import dead_letters, member, register, twin_payment, twin_refund, wait_events

pytestmark = pytest.mark.integration
AUTH_PATH = "/v1/callbacks/wechatpay/circle/authorizations"
PAY_PATH = "/v1/callbacks/wechatpay/circle/payments"
AT = "2026-11-30T10:15:00+08:00"


@pytest.fixture(scope="module")
def wx(tmp_path_factory: pytest.TempPathFactory) -> tuple[WeChatPaySimulator, dict[str, str]]:
    sim, _ali, env = simulators(tmp_path_factory.mktemp("circle-keys"))
    return sim, env


@pytest.fixture(scope="module")
def api() -> Iterator[WeChatPayApi]:
    server = WeChatPayApi().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cw(services: None, wx: tuple[WeChatPaySimulator, dict[str, str]], api: WeChatPayApi,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    home = tmp_path_factory.mktemp("circle")
    w = new_worker(home, "circle", **wx[1], **api.env(home / "merchant"),
                   LOYALTY_WECHATPAY_CIRCLE_SYNC_INTERVAL="0.3")
    w.start()
    yield w
    w.stop()
    w.cleanup()


def post(w: WorkerProcess, sim: WeChatPaySimulator, path: str, event_type: str, resource: dict[str, Any]
         ) -> tuple[int, Any]:
    body = sim.notification(event_type, resource)
    return w.post(path, body, sim.headers(body))


def new_ids() -> tuple[str, str]:
    return f"o{uuid.uuid4().hex[:27]}", f"42000{uuid.uuid4().int % 10**23:023d}"


def authorised_member(w: WorkerProcess, sim: WeChatPaySimulator, openid: str) -> str:
    m = register(w)
    assert post(w, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, m)) == (204, None)
    return m


def synced(api: WeChatPayApi, tx: str, w: WorkerProcess, timeout: float = 60) -> dict[str, Any]:
    """The one points sync WeChat Pay took for `tx` (waits for it; fails on a second one)."""
    w.wait_until(lambda: api.calls_to("/points/notify", transaction_id=tx), timeout=timeout,
                 what=f"the points sync of {tx}")
    calls = api.calls_to("/points/notify", transaction_id=tx)
    assert len(calls) == 1, calls
    return calls[0].json


def test_authorise_pay_sync_refund_in_order(cw: WorkerProcess, wx: Any, api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    assert post(cw, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, m)) == (204, None)  # a retry
    twin = register(cw)
    base = member(cw, m)["balance"]
    pay = sim.circle_transaction(tx, openid, 12_345, "SH-F1-01", time_end=AT)
    for _ in range(2):  # WeChat Pay retries until it has a 2xx
        assert post(cw, sim, PAY_PATH, PAID, pay) == (204, None)
    ref = twin_payment(twin, f"twin-{tx}", 12_345, "sh-mall", "sh-mall-shop-01", "fashion")
    assert cw.send_callback({**ref, "occurred_at": AT})[0] == 202
    got, want = wait_events(cw, m, 2), wait_events(cw, twin, 2)
    earned = got["balance"] - base
    assert earned == want["balance"] - base > 0
    assert got["recent_movements"][0]["event_id"] == f"wx:{tx}"

    sync = synced(api, tx, cw)
    assert sync == {"transaction_id": tx, "appid": "wxd678efh567hg6787", "openid": openid, "earn_points": True,
                    "increased_points": earned, "points_update_time": sync["points_update_time"],
                    "total_points": got["balance"]}
    # The call's signature, checked with the published SDK: for the header's own time and
    # nonce, wechatpayv3 builds the very same Authorization from the merchant's key.
    call = api.calls_to("/points/notify", transaction_id=tx)[0]
    fields = dict(part.split("=", 1) for part in call.headers["Authorization"].split(" ", 1)[1].split(","))
    with mock.patch("wechatpayv3.utils.time.time", return_value=float(fields["timestamp"].strip('"'))):
        sdk = build_authorization(POINTS_NOTIFY_PATH, "POST", api.mchid, api.serial, api.merchant_key,
                                  data=call.body.decode(), nonce_str=fields["nonce_str"].strip('"'))
    assert call.headers["Authorization"] == sdk

    # A partial refund after the sync, through the circle's refund notification and the
    # ordinary one (one refund id: one event), each retried: clawed back once.
    refund_id = f"5030{uuid.uuid4().int % 10**20:020d}"
    circle_refund = sim.circle_refund(refund_id, tx, openid, 2_000, 12_345, "SH-F1-01", refund_time=AT)
    assert post(cw, sim, PAY_PATH, REFUNDED, circle_refund) == (204, None)
    assert post(cw, sim, PAY_PATH, REFUNDED, circle_refund) == (204, None)
    assert post(cw, sim, "/v1/callbacks/wechatpay", "REFUND.SUCCESS",
                sim.refund(refund_id, tx, 2_000, 12_345, success_time=AT)) == (204, None)
    assert cw.send_callback({**twin_refund(ref, f"twin-rf-{tx}", 2_000), "occurred_at": AT})[0] == 202
    got, want = wait_events(cw, m, 3), wait_events(cw, twin, 3)
    assert got["balance"] == want["balance"] < base + earned and got["events"] == 3
    time.sleep(1.5)  # several sync rounds: nothing is synced twice
    assert len(api.calls_to("/points/notify", transaction_id=tx)) == 1
    assert api.refused == []
    cw.wait_until(lambda: cw.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=60,
                  what="Redis, wallet and ledger to agree")


def test_a_payment_before_the_authorisation_is_refused_until_it_and_then_earns(
        cw: WorkerProcess, wx: Any, api: WeChatPayApi) -> None:
    """WeChat Pay sends circle payments of authorised members only, so an openid unknown here
    means its authorisation notification is still on its way: 503, dead-lettered, and the
    payment's own retries (15 s ... 24 h) bring it in once the authorisation is taken."""
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = register(cw)
    pay = sim.circle_transaction(tx, openid, 8_000, "SH-F1-01")
    body = sim.notification(PAID, pay)
    code, reply = cw.post(PAY_PATH, body, sim.headers(body))
    assert code == 503 and reply["code"] == "FAIL" and "not authorised" in reply["message"], reply
    marker = orjson.loads(body)["id"]
    cw.wait_until(lambda: len(dead_letters(cw, marker)) == 1, timeout=30, what="the dead letter")
    letter = dead_letters(cw, marker)[0]
    assert letter["source"] == "wechatpay_circle" and letter["field"] == "openid", letter
    base = member(cw, m)
    assert base["events"] == 1

    assert post(cw, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, m)) == (204, None)
    assert post(cw, sim, PAY_PATH, PAID, pay) == (204, None)  # WeChat Pay's retry
    got = wait_events(cw, m, 2)
    assert got["balance"] > base["balance"]
    assert synced(api, tx, cw)["increased_points"] == got["balance"] - base["balance"]


def test_the_authorisation_credits_the_openids_earlier_guest_payments(cw: WorkerProcess, wx: Any) -> None:
    """An ordinary WeChat Pay payment of an openid bound to no one is a guest payment; the
    circle authorisation binds the openid and credits it (within the credit window), once."""
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    assert post(cw, sim, "/v1/callbacks/wechatpay", "TRANSACTION.SUCCESS",
                sim.transaction(tx, openid, 15_000, success_time=now)) == (204, None)
    cw.wait_caught_up()
    m, twin = register(cw), register(cw)
    base = member(cw, m)["balance"]
    assert post(cw, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, m)) == (204, None)
    assert post(cw, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, m)) == (204, None)
    ref = twin_payment(twin, f"twin-{tx}", 15_000, "sh-mall", "sh-mall-shop-01", "fashion")
    assert cw.send_callback({**ref, "occurred_at": now})[0] == 202
    got, want = wait_events(cw, m, 2), wait_events(cw, twin, 2)
    assert got["balance"] - base == want["balance"] - base > 0 and got["events"] == 2
    assert got["recent_movements"][0]["event_id"] == f"wx:{tx}"


def test_the_same_transaction_through_both_notification_kinds_earns_once(
        cw: WorkerProcess, wx: Any, api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    base = member(cw, m)["balance"]
    assert post(cw, sim, "/v1/callbacks/wechatpay", "TRANSACTION.SUCCESS",
                sim.transaction(tx, openid, 20_000, success_time=AT)) == (204, None)
    first = wait_events(cw, m, 2)
    assert first["balance"] > base
    assert post(cw, sim, PAY_PATH, PAID, sim.circle_transaction(tx, openid, 20_000, "SH-F1-01",
                                                                time_end=AT)) == (204, None)
    got = wait_events(cw, m, 2)
    assert got["events"] == 2 and got["balance"] == first["balance"]
    # Synced with the points the ordinary notification earned (the payment applied once).
    assert synced(api, tx, cw)["increased_points"] == got["balance"] - base


def test_a_payment_that_earns_nothing_is_synced_with_a_remark(cw: WorkerProcess, wx: Any,
                                                               api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    base = member(cw, m)["balance"]
    assert post(cw, sim, PAY_PATH, PAID, sim.circle_transaction(tx, openid, 3_000, "SH-B1-07")) == (204, None)
    got = wait_events(cw, m, 2)
    assert got["balance"] == base
    sync = synced(api, tx, cw)
    assert (sync["earn_points"], sync["increased_points"], sync["no_points_remarks"]) == (False, 0, "本单不积分")


def test_the_sync_failing_then_recovering_syncs_once_and_survives_a_loss_of_redis(
        cw: WorkerProcess, wx: Any, api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    base = member(cw, m)["balance"]
    before = cw.metrics()
    api.fail_status = 500
    try:
        assert post(cw, sim, PAY_PATH, PAID, sim.circle_transaction(tx, openid, 5_000, "SH-F1-01")) == (204, None)
        got = wait_events(cw, m, 2)
        cw.wait_until(lambda: api.failed >= 4, timeout=60, what="WeChat Pay to refuse a few tries")
        # Redis loses the pending sync meanwhile: the rebuild brings it back from ClickHouse.
        r = redis.Redis.from_url(cw.redis_url)
        cw.wait_caught_up()
        assert r.delete(f"{cw.run_id}:circle:{tx}") == 1
        r.zrem(f"{cw.run_id}:circle-due", tx)
        status, page = cw.post("/v1/admin/rebuild", b'{"offset": 0, "limit": 10000}',
                               {"Authorization": f"Bearer {cw.admin_token}"})
        assert status == 200 and page["bindings"] > 0, page
        restored_pending = orjson.loads(r.get(f"{cw.run_id}:circle:{tx}") or b"{}")
        assert restored_pending.get("status") == "pending", restored_pending
    finally:
        api.fail_status = None
    # A try put back while the rebuild ran waits out its back-off (2^attempts s, up to 10 min).
    sync = synced(api, tx, cw, timeout=150)
    assert sync["increased_points"] == got["balance"] - base > 0
    after = cw.metrics()
    for counter in ("wechatpay_circle_call_retries_total", "wechatpay_circle_sync_deferred_total",
                    "wechatpay_circle_synced_total"):
        assert after.get(counter, 0) > before.get(counter, 0), counter
    time.sleep(1.5)
    assert len(api.calls_to("/points/notify", transaction_id=tx)) == 1
    # The outcome is durable: Redis loses it, the rebuild restores it as synced (not to send again).
    cw.wait_until(lambda: orjson.loads(r.get(f"{cw.run_id}:circle:{tx}") or b"{}").get("status") == "synced",
                  timeout=30, what="the sync recorded")  # its row was sent before Redis had it
    cw.wait_caught_up()
    r.delete(f"{cw.run_id}:circle:{tx}")
    assert cw.post("/v1/admin/rebuild", b'{"offset": 0, "limit": 10000}',
                   {"Authorization": f"Bearer {cw.admin_token}"})[0] == 200
    restored = orjson.loads(r.get(f"{cw.run_id}:circle:{tx}") or b"{}")
    assert restored["status"] == "synced" and restored["request"] == sync
    assert r.ttl(f"{cw.run_id}:circle:{tx}") > 30 * 86_400
    time.sleep(1.5)
    assert len(api.calls_to("/points/notify", transaction_id=tx)) == 1


def test_parking_entry_and_exit_of_a_circle_member_are_synced(cw: WorkerProcess, wx: Any,
                                                               api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, _ = new_ids()
    m = authorised_member(cw, sim, openid)
    plate = f"沪A{uuid.uuid4().int % 10**5:05d}"
    body = orjson.dumps({"plate": plate, "auto_pay": False})
    assert cw.post(f"/v1/members/{m}/plates", body, cw.pos_headers(body))[0] == 200
    stranger = f"沪B{uuid.uuid4().int % 10**5:05d}"  # bound to no member: nothing to tell
    for kind, minutes_ago in (("entry", 30), ("exit", 0)):
        for car in (plate, stranger):
            at = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")
            event = orjson.dumps({"event_id": f"{kind}-{uuid.uuid4().hex[:10]}", "type": kind, "occurred_at": at,
                                  "plate": car, "car_park": "sh-park", "gate": "g1"})
            assert cw.post("/v1/callbacks/parking", event, signed_headers(cw.callback_secret, event))[0] == 202
        if kind == "entry":
            quote = f"/v1/parking/quote?plate={urllib.parse.quote(plate)}&car_park=sh-park"
            cw.wait_until(lambda q=quote: cw.get(q)[0] == 200, timeout=30, what="the entry")
    cw.wait_until(lambda: len(api.calls_to("/parkings", plate_number=plate)) == 2, timeout=60,
                  what="the parking syncs")
    calls = [c.json for c in api.calls_to("/parkings", plate_number=plate)]
    assert [c["state"] for c in calls] == ["IN", "OUT"]
    assert all(c["openid"] == openid and c["brandid"] == api.brandid for c in calls)
    assert api.calls_to("/parkings", plate_number=stranger) == []


@pytest.mark.parametrize(("case", "status", "field"), [
    ("unknown shop", 503, "shop_number"), ("unregistered member", 503, "code"),
    ("openid of another member", 409, "openid"), ("refund of an unseen payment", 503, "transaction_id"),
])
def test_circle_refusals_are_retried_dead_lettered_and_change_nothing(
        cw: WorkerProcess, wx: Any, case: str, status: int, field: str) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    before = member(cw, m)
    path, event_type, res = {
        "unknown shop": (PAY_PATH, PAID, sim.circle_transaction(tx, openid, 100, "SH-NOWHERE")),
        "unregistered member": (AUTH_PATH, AUTHORIZED, sim.circle_authorization(f"o{tx}", f"m-{tx[-10:]}")),
        "openid of another member": (AUTH_PATH, AUTHORIZED, sim.circle_authorization(openid, register(cw))),
        "refund of an unseen payment": (PAY_PATH, REFUNDED, sim.circle_refund(f"50{tx}", tx, openid, 100, 100,
                                                                               "SH-F1-01")),
    }[case]
    body = sim.notification(event_type, res)
    code, reply = cw.post(path, body, sim.headers(body))
    assert code == status and reply["code"] == "FAIL", reply
    marker = orjson.loads(body)["id"]
    cw.wait_until(lambda: len(dead_letters(cw, marker)) == 1, timeout=30, what=f"the dead letter of {case}")
    assert dead_letters(cw, marker)[0]["field"] == field
    cw.wait_caught_up()
    assert member(cw, m)["balance"] == before["balance"] and member(cw, m)["events"] == before["events"]


def test_a_refund_naming_another_openid_is_refused_and_the_right_one_taken(cw: WorkerProcess, wx: Any,
                                                                           api: WeChatPayApi) -> None:
    sim: WeChatPaySimulator = wx[0]
    openid, tx = new_ids()
    m = authorised_member(cw, sim, openid)
    base = member(cw, m)["balance"]
    assert post(cw, sim, PAY_PATH, PAID, sim.circle_transaction(tx, openid, 9_000, "SH-F1-01")) == (204, None)
    paid = wait_events(cw, m, 2)
    synced(api, tx, cw)
    stranger = f"o{uuid.uuid4().hex[:27]}"
    wrong = sim.notification(REFUNDED, sim.circle_refund("5031", tx, stranger, 9_000, 9_000, "SH-F1-01"))
    code, reply = cw.post(PAY_PATH, wrong, sim.headers(wrong))
    assert code == 400 and stranger in reply["message"], reply
    marker = orjson.loads(wrong)["id"]
    cw.wait_until(lambda: len(dead_letters(cw, marker)) == 1, timeout=30, what="the dead letter")
    assert dead_letters(cw, marker)[0]["field"] == "openid"
    cw.wait_caught_up()
    assert member(cw, m)["balance"] == paid["balance"] > base
    assert post(cw, sim, PAY_PATH, REFUNDED, sim.circle_refund("5031", tx, openid, 9_000, 9_000,
                                                               "SH-F1-01")) == (204, None)
    got = wait_events(cw, m, 3)
    assert got["balance"] == base and got["events"] == 3


def test_circle_notifications_without_the_merchant_configured_answer_503(services: None, tmp_path: Path,
                                                                          wx: Any) -> None:
    w = new_worker(tmp_path, "nocircle", **wx[1])  # WeChat Pay keys, but no merchant key or number
    w.start()
    try:
        sim: WeChatPaySimulator = wx[0]
        code, reply = post(w, sim, AUTH_PATH, AUTHORIZED, sim.circle_authorization("o1", "m-1"))
        assert code == 503 and reply["code"] == "FAIL"
    finally:
        w.stop()


def test_redis_holds_only_keys_of_known_families_each_bounded(cw: WorkerProcess) -> None:
    assert cw.keys_out_of_bounds() == []
