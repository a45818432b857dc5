"""Security over the real services: scoped credentials, replayed requests, rate limits per
client key, and phone numbers kept out of ClickHouse, Redis keys and the logs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.parse
import uuid
from typing import Any

import orjson
import pytest
import redis

from devtools.workers import WorkerProcess, read_dead_letters
from streams.auth import member_token
from streams.settings import Settings
from streams.signing import signed_headers

pytestmark = pytest.mark.integration


def payment(member: str | None, amount: int = 10_000, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"sec-{uuid.uuid4().hex[:12]}", "type": "payment",
                          "occurred_at": "2026-11-23T12:00:00+08:00", "bu_id": "sh-mall",
                          "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": amount,
                          "channel": "wechat"}
    if member is not None:
        ev["member_id"] = member
    ev.update(over)
    return ev


@pytest.fixture(scope="module")
def sw(services: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    run_id = f"t-sec-{uuid.uuid4().hex[:8]}"
    w = WorkerProcess(run_id=run_id, data_dir=tmp_path_factory.mktemp("sec") / run_id,
                      extra_env={"LOYALTY_RATE_LIMIT_MEMBER": "5"})
    w.start()
    yield w
    w.stop()
    w.cleanup()


def test_member_data_is_readable_only_with_the_members_own_token(sw: WorkerProcess) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    for m in (alice, bob):
        assert sw.send_callback(payment(m))[0] == 202
    sw.wait_until(lambda: all(sw.get(f"/v1/members/{m}")[0] == 200 for m in (alice, bob)), 60, "both members")
    own = sw.member_token(alice)
    for path in (f"/v1/members/{alice}", f"/v1/members/{alice}/coupons", f"/v1/members/{alice}/ledger"):
        assert sw.get(path, token=own)[0] == 200, path
    for path in (f"/v1/members/{bob}", f"/v1/members/{bob}/coupons", f"/v1/members/{bob}/ledger"):
        status, body = sw.get(path, token=own)
        assert status == 403 and "another member" in body["error"], path
        assert sw.get(path, token="")[0] == 401  # no credentials
        assert sw.get(path, token=sw.callback_secret)[0] == 401  # the gateway secret is not a read key
    forged = own[: own.rindex(".")] + "." + "0" * 64
    assert sw.get(f"/v1/members/{alice}", token=forged)[0] == 401
    assert sw.get(f"/v1/members/{alice}", token=own.replace(alice, bob, 1))[0] == 401  # id swapped, mac kept
    expired = member_token(sw.member_token_secret, alice, ttl_s=-10)
    assert sw.get(f"/v1/members/{alice}", token=expired)[0] == 401
    # Staff: the till's POS key reads any member; a member token does not open the parking desk.
    assert sw.get(f"/v1/members/{bob}", token=sw.pos_bearer)[0] == 200
    assert sw.get(f"/v1/members/{bob}", token=f"pos:{sw.pos_key_id}:{'x' * 32}")[0] == 401
    quote = f"/v1/parking/sessions?plate={urllib.parse.quote('沪A12345')}"
    assert sw.get(quote, token=own)[0] == 403
    # Admin operations want the admin token, not a member's or the till's.
    for token in (own, sw.pos_bearer):
        assert sw.get("/v1/admin/reconcile", token=token)[0] == 401


def test_keys_are_scoped_to_their_endpoints(sw: WorkerProcess) -> None:
    m = f"scope-{uuid.uuid4().hex[:6]}"
    assert sw.send_callback(payment(m, 50_000))[0] == 202
    sw.wait_until(lambda: sw.get(f"/v1/members/{m}")[0] == 200, 60, "the member")
    body = orjson.dumps({"member_id": m, "kind": "cash_offset", "points": 10, "bu_id": "sh-mall"})
    # The gateway's callback secret cannot spend points at the till...
    status, answer = sw.post("/v1/redemptions", body,
                             {**signed_headers(sw.callback_secret, body), "Idempotency-Key": f"k-{m}-1"})
    assert status == 401 and "X-Key-Id" in answer["error"]
    # ...nor can an unknown POS key, and a POS key cannot send payment callbacks.
    status, _ = sw.post("/v1/redemptions", body, {**signed_headers(sw.pos_secret, body, key_id="pos-nobody"),
                                                  "Idempotency-Key": f"k-{m}-2"})
    assert status == 401
    pay = orjson.dumps(payment(m))
    assert sw.post("/v1/callbacks/payment", pay, signed_headers(sw.pos_secret, pay, key_id=sw.pos_key_id))[0] == 403
    status, answer = sw.post("/v1/redemptions", body, sw.pos_headers(body, **{"Idempotency-Key": f"k-{m}-3"}))
    assert status == 201, answer
    assert sw.get(f"/v1/members/{m}")[1]["events"] == 2  # the payment and one redemption, nothing else


def test_manual_adjustments_need_the_admin_token_and_a_reason(sw: WorkerProcess) -> None:
    m = f"adj-{uuid.uuid4().hex[:6]}"
    assert sw.send_callback(payment(m, 10_000))[0] == 202
    sw.wait_until(lambda: sw.get(f"/v1/members/{m}")[0] == 200, 60, "the member")
    start = sw.get(f"/v1/members/{m}")[1]["balance"]
    path = f"/v1/admin/members/{m}/adjustments"

    def adjust(points: int, reason: str = "goodwill: receipt lost at the till", key: str = "a1",
               token: str | None = None) -> tuple[int, Any]:
        body = orjson.dumps({"adjustment_id": key, "points": points, "reason": reason})
        return sw.post(path, body, {"Authorization": f"Bearer {token or sw.admin_token}"})

    for token in (sw.pos_bearer, sw.member_token(m), sw.callback_secret):
        assert adjust(100, token=token)[0] == 401
    assert adjust(100, reason="")[0] == 400
    assert adjust(0)[0] == 400
    status, answer = adjust(100)
    assert status == 201 and answer["applied"], answer
    assert adjust(100)[0] == 201  # the same adjustment again: counted once
    status, answer = adjust(-(start + 1_000), key="a2", reason="correction")
    assert status == 409 and answer["available"] == start + 100
    assert adjust(-50, key="a3", reason="duplicate goodwill")[0] == 201
    member = sw.get(f"/v1/members/{m}")[1]
    assert member["balance"] == start + 100 - 50
    reasons = [p["id"] for r in member["recent_movements"] if r["kind"] == "adjustment" for p in r["explain"]]
    assert sorted(reasons) == ["duplicate goodwill", "goodwill: receipt lost at the till"]
    # Not through the gateways' callback: an adjustment is for operators only.
    body = orjson.dumps({"event_id": "adj-cb", "type": "adjustment", "member_id": m, "points": 10 ** 6,
                         "reason": "free points", "occurred_at": "2026-11-23T12:00:00+08:00"})
    assert sw.post("/v1/callbacks/member", body, signed_headers(sw.callback_secret, body))[0] == 400
    # Nor an erasure: the member events a callback may send are an allow list.
    body = orjson.dumps({"event_id": "erase-cb", "type": "erase", "member_id": m,
                         "occurred_at": "2026-11-23T12:00:00+08:00"})
    status, answer = sw.post("/v1/callbacks/member", body, signed_headers(sw.callback_secret, body))
    assert status == 400 and answer["field"] == "type" and "operators" in answer["error"], answer
    sw.wait_until(lambda: sw.get("/v1/admin/reconcile")[1]["clean"], 60, "Redis = ledger")
    assert sw.get(f"/v1/members/{m}")[1]["balance"] == start + 100 - 50, "not erased"


def test_a_replayed_request_is_refused_and_dead_lettered(sw: WorkerProcess) -> None:
    m = f"replay-{uuid.uuid4().hex[:6]}"
    body = orjson.dumps(payment(m))
    headers = signed_headers(sw.callback_secret, body)
    assert sw.post("/v1/callbacks/payment", body, headers)[0] == 202
    status, answer = sw.post("/v1/callbacks/payment", body, headers)  # captured and sent again
    assert status == 401 and "already used" in answer["error"]
    # The gateway's own retry signs anew and is accepted (and counts once).
    assert sw.post("/v1/callbacks/payment", body, signed_headers(sw.callback_secret, body))[0] == 202
    old = signed_headers(sw.callback_secret, body, now=time.time() - 3600)
    assert sw.post("/v1/callbacks/payment", body, old)[0] == 401  # outside the window
    sw.wait_until(lambda: sw.get(f"/v1/members/{m}")[1].get("events") == 1, 60, "the payment, once")
    settings = Settings.from_env()
    letters = asyncio.run(read_dead_letters(settings.kafka_bootstrap, f"{sw.run_id}.dead-letter", wait_s=3))
    assert any("already used" in d["reason"] for d in letters)


def test_rate_limit_per_member_key(sw: WorkerProcess) -> None:
    busy, calm = f"busy-{uuid.uuid4().hex[:6]}", f"calm-{uuid.uuid4().hex[:6]}"
    for m in (busy, calm):
        assert sw.send_callback(payment(m))[0] == 202
    sw.wait_until(lambda: all(sw.get(f"/v1/members/{m}")[0] == 200 for m in (busy, calm)), 60, "both members")
    token = sw.member_token(busy)
    statuses = [sw.get(f"/v1/members/{busy}", token=token)[0] for _ in range(30)]
    assert 429 in statuses and statuses.count(200) >= 5, statuses  # limit 5/s
    assert sw.get(f"/v1/members/{calm}", token=sw.member_token(calm))[0] == 200  # its own budget
    time.sleep(1.1)
    assert sw.get(f"/v1/members/{busy}", token=token)[0] == 200  # the next second


def test_phone_numbers_never_reach_clickhouse_redis_or_logs(sw: WorkerProcess) -> None:
    phone = f"139{uuid.uuid4().int % 10**8:08d}"
    m = f"phone-{uuid.uuid4().hex[:6]}"
    guest = payment(None, 20_000, payer={"kind": "phone", "id": phone})
    assert sw.send_callback(guest)[0] == 202
    sw.wait_until(lambda: sw.metrics()["events_guest_total"] >= 1, 60, "the guest payment")
    reg = {"event_id": f"reg-{m}", "type": "register", "member_id": m, "occurred_at": "2026-11-23T12:05:00+08:00",
           "external_ids": [{"kind": "phone", "id": f"+86 {phone}"}]}
    body = orjson.dumps(reg)
    assert sw.post("/v1/callbacks/member", body, signed_headers(sw.callback_secret, body))[0] == 202
    # The pseudonym is stable: the guest payment by phone is credited to the member who registered it.
    sw.wait_until(lambda: sw.get(f"/v1/members/{m}")[1].get("balance", 0) > 0, 60, "the guest credit")
    bad = orjson.dumps({"event_id": "bad-1", "type": "payment", "payer": {"kind": "phone", "id": phone}})
    assert sw.send_callback(bad)[0] == 400
    sw.wait_until(lambda: sw.get("/v1/admin/ledger/totals")[1].get("events", 0) >= 1, 60, "the ledger")
    time.sleep(1.5)  # the guest fact's insert
    settings = Settings.from_env()
    letters = asyncio.run(read_dead_letters(settings.kafka_bootstrap, f"{sw.run_id}.dead-letter", wait_s=3))
    assert letters and not any(phone in orjson.dumps(d).decode() for d in letters)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = list(r.scan_iter(match=f"{sw.run_id}:*", count=1000))
    assert keys and not any(phone in k for k in keys)
    sw.stop()  # the embedded store belongs to the worker: read it after it stopped
    try:
        dump = subprocess.run(
            [sys.executable, "-c", DUMP_STORE, f"chdb://{sw.data_dir / 'chdb'}"],
            capture_output=True, text=True, check=True, timeout=120).stdout
        assert "guest_payments" in dump and "ph_" in dump  # the pseudonym is there...
        assert phone not in dump  # ...the number is not, in any table
        log = sw.log_path.read_text(errors="replace") if sw.log_path else ""
        assert phone not in log
        for secret in (sw.callback_secret, sw.admin_token, sw.pos_secret, sw.member_token_secret, sw.pii_key):
            assert secret not in log
    finally:
        sw.start()


# Every row of every table, as text (a child process: chdb holds one store per process).
DUMP_STORE = """
import sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn=sys.argv[1])
for (t,) in c.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows:
    print("##", t)
    print(c.raw_query(f"SELECT * FROM `{t}` FORMAT TSV").decode(errors="replace"))
"""


def test_redis_holds_only_keys_of_known_families_each_bounded(sw: WorkerProcess) -> None:
    """After this module's traffic: every key described in streams/state/keys.py, and each
    one of a family that grows per event or request carrying its expiry."""
    assert sw.keys_out_of_bounds() == []
