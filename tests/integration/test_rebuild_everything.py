"""Redis is a cache of durable facts (issue 21): after Redis lost a worker's whole
namespace, `loyalty rebuild` brings every member back as they were, kind by kind (points
and lots, tiers and overrides, coupons, profile and segments, holds, engagement, stored
value, exchanges, counters, held refunds, bindings), a rebuild interrupted half way and run
again ends the same, and the day then goes on exactly as on a twin that never lost Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest

from devtools import recovery_check
from devtools.workers import WorkerProcess, post_signed_many, send_callbacks_in_order

pytestmark = pytest.mark.integration


def test_the_demo_day_is_whole_again_after_redis_lost_everything(services: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The demo day (every feature) ends by wiping its Redis namespace, rebuilding and
    comparing every member kind by kind; its result is OK only if each kind is equal."""
    from devtools.demo import run_demo

    rc = run_demo(events=400, members=60, seed=20261130, concurrency=16)
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out[out.index("Redis lost, then rebuilt"):].splitlines()
    kinds = [ln for ln in lines[1:] if ln.startswith("  ")]
    assert len(kinds) == len(recovery_check.KINDS) + 6, lines
    for ln in kinds:
        equal, total = ln.split()[-1].split("/")
        assert equal == total, ln
    held = next(ln for ln in kinds if "refunds held" in ln)
    assert int(held.split()[-1].split("/")[1]) > 0, "the demo day holds refunds of payments not seen yet"


def now_iso(minutes_ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")


def pay(m: str, n: int, amount: int, category: str = "fashion", payer: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"tx-{m}-{n}", "type": "payment", "occurred_at": now_iso(30 - n),
                          "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": category,
                          "amount_fen": amount, "channel": "wechat"}
    if payer:
        ev["payer"] = {"kind": "wechat", "id": payer}
    else:
        ev["member_id"] = m
    return ev


def refund(p: dict[str, Any], amount: int, member: str) -> dict[str, Any]:
    return {**p, "event_id": f"{p['event_id']}-rf", "type": "refund", "refund_of": p["event_id"],
            "amount_fen": amount, "member_id": member, "payer": None}


def lane(event: dict[str, Any]) -> str:
    """A member's callbacks in one lane, those naming its openid (`o-<member>`) included."""
    return str(event.get("member_id") or event["payer"]["id"][2:])


def similar(a: Any, b: Any, key: str = "") -> bool:
    """Equal, but for times of processing (fields ending in _ms) within two minutes: the
    twin applies the same events a moment apart."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(similar(a[k], b[k], k) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(similar(x, y, key) for x, y in zip(a, b, strict=True))
    if key.endswith("_ms") and isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 120_000
    return bool(a == b)


class Day:
    """The same day sent to a worker: each member's events in order."""

    def __init__(self, members: list[str]) -> None:
        self.members = members
        self.openids = {m: f"o-{m}" for m in members}

    def phase1(self, w: WorkerProcess) -> None:
        regs = [orjson.dumps({"event_id": f"reg-{m}", "type": "register", "member_id": m,
                              "occurred_at": now_iso(40), "external_ids": [{"kind": "wechat", "id": self.openids[m]}]})
                for m in self.members]
        asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, regs, path="/v1/callbacks/member"))
        w.wait_until(lambda: all(w.get(f"/v1/members/{m}")[0] == 200 for m in self.members), 60, "registrations")
        w.wait_caught_up(60)
        bodies: list[bytes] = []
        for i, m in enumerate(self.members):
            p1 = pay(m, 1, 20_000 + 1_000 * i)
            bodies += [orjson.dumps(p1), orjson.dumps(pay(m, 2, 12_000, "food", payer=self.openids[m]))]
            if i % 3 == 0:
                bodies.append(orjson.dumps(refund(p1, 5_000, m)))
            if i == 1:
                # A refund before its payment: held until phase 2 brings the payment.
                bodies.append(orjson.dumps(refund(pay(m, 9, 30_000), 10_000, m)))
        asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, bodies, lane_of=lane))
        w.wait_until(lambda: all(w.get(f"/v1/members/{m}")[1].get("events", 0) >= 3 for m in self.members), 60,
                     "phase 1 payments")
        m = self.members
        ops = [("/v1/stored-value/topups", {"member_id": m[1], "amount_fen": 50_000, "channel": "wechat"}, "top-1"),
               ("/v1/holds", {"member_id": m[2], "points": 100, "ttl_seconds": 3600}, "hold-2"),
               (f"/v1/members/{m[3]}/plates", {"plate": f"沪A{m[3][-5:].upper()}", "auto_pay": True}, "plate-3"),
               ("/v1/sign-in-plans/week/sign-ins", {"member_id": m[4]}, "sign-4")]
        results = asyncio.run(post_signed_many(w, ops, 1))
        assert [st for st, _ in results] == [201, 201, 200, 201], results
        svpay = [("/v1/stored-value/payments", {"member_id": m[1], "amount_fen": 8_000, "bu_id": "sh-mall",
                                                "merchant_id": "sh-mall-shop-01", "category": "fashion"}, "svpay-1")]
        assert asyncio.run(post_signed_many(w, svpay, 1))[0][0] == 201
        _, body = w.get(f"/v1/members/{m[5]}/coupons")
        (welcome,) = [c for c in body["coupons"] if c["template"] == "welcome-20" and c["status"] == "active"]
        till = [("/v1/coupons/redeem", {"member_id": m[5], "coupon_id": welcome["coupon_id"], "payment_id": "till-5",
                                        "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "food",
                                        "amount_fen": 15_000, "occurred_at": now_iso(5)}, "coupon-5")]
        assert asyncio.run(post_signed_many(w, till, 1))[0][0] == 201
        assert w.post(f"/v1/admin/members/{m[6]}/tier", orjson.dumps({"tier": "diamond"}),
                      {"Authorization": f"Bearer {w.admin_token}"})[0] == 200
        w.wait_until(lambda: w.get(f"/v1/members/{m[1]}")[1].get("events", 0) >= 6, 60, "the stored-value payment")
        w.wait_caught_up(60)

    def phase2(self, w: WorkerProcess) -> None:
        m = self.members
        bodies = [orjson.dumps(pay(x, 3, 9_000)) for x in m]
        bodies.append(orjson.dumps(pay(m[1], 9, 30_000)))  # the held refund's payment at last
        asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, bodies))
        again = [("/v1/stored-value/topups", {"member_id": m[1], "amount_fen": 50_000, "channel": "wechat"}, "top-1")]
        retry = asyncio.run(post_signed_many(w, again, 1))
        assert retry[0][0] == 200, f"a retry of a top-up answers its stored answer: {retry}"
        redeem = orjson.dumps({"member_id": m[7], "bu_id": "sh-mall", "kind": "cash_offset", "points": 50})
        assert w.post("/v1/redemptions", redeem, {**w.pos_headers(redeem), "Idempotency-Key": "r-7"})[0] == 201
        w.wait_until(lambda: w.get(f"/v1/members/{m[1]}")[1].get("events", 0) >= 9, 60, "phase 2")
        w.wait_caught_up(60)


def test_a_rebuild_interrupted_and_run_again_ends_equal_and_the_day_goes_on_as_on_a_twin(
        worker_factory: Any) -> None:
    members = [f"rb{k}-{uuid.uuid4().hex[:6]}" for k in range(9)]
    day = Day(members)
    lost: WorkerProcess = worker_factory("lost")
    twin: WorkerProcess = worker_factory("twin")
    lost.start()
    twin.start()
    for w in (lost, twin):
        day.phase1(w)
    before = recovery_check.capture(lost.redis_url, lost.run_id)
    assert before.held and any("plate:" in k for k in before.bindings) and len(before.states) == len(members)

    assert recovery_check.wipe(lost.redis_url, lost.run_id) > 30
    assert lost.get(f"/v1/members/{members[0]}")[0] == 404
    # Interrupted after its first page (of 3 members)...
    status, page = lost.post("/v1/admin/rebuild", b'{"offset": 0, "limit": 3}',
                             {"Authorization": f"Bearer {lost.admin_token}"})
    assert status == 200 and page["rebuilt"] == 3 and page["next_offset"] == 3, page
    # ... and run again from the start: it ends the same as one run.
    out = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "--page", "4"], env=lost.env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rebuilt {len(members)} members" in out.stdout, out.stdout
    after = recovery_check.capture(lost.redis_url, lost.run_id)
    diffs = [k for k in recovery_check.compare(before, after) if not k.ok]
    assert not diffs, diffs
    # `loyalty reconcile` checks Redis against the durable facts kind by kind.
    rec = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile"], env=lost.env, capture_output=True,
                         text=True, timeout=120)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    by_kind = [ln for ln in rec.stdout.splitlines() if " checked " in ln]
    for want in ("coupons", "holds", "stored value against its ledger", "budgets and stocks", "refunds held",
                 "bindings"):
        assert any(want in ln for ln in by_kind), (want, rec.stdout)
    assert all(ln.split()[-2] == "0" for ln in by_kind if "differ" in ln), rec.stdout
    # A kind that differs is found: a coupon taken out of one member's state in Redis.
    import redis as redis_client

    client = redis_client.Redis.from_url(lost.redis_url, decode_responses=True)
    key = f"{lost.run_id}:m:{{{members[5]}}}"
    state = orjson.loads(client.hget(key, "state"))
    state["coupons"] = state["coupons"][1:]
    client.hset(key, "state", orjson.dumps(state).decode())
    bad = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile"], env=lost.env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout
    (coupons_line,) = [ln for ln in bad.stdout.splitlines() if ln.strip().startswith("coupons ")]
    assert " 1 differ" in coupons_line and members[5] in coupons_line, bad.stdout
    client.hset(key, "state", orjson.dumps(after.states[members[5]]).decode())
    client.close()

    for w in (lost, twin):
        day.phase2(w)
    a = recovery_check.capture(lost.redis_url, lost.run_id)
    b = recovery_check.capture(twin.redis_url, twin.run_id)
    assert a.counters == b.counters
    assert set(a.states) == set(b.states)
    for m in members:
        for state in (a.states[m], b.states[m]):
            for c in state.get("coupons", []):
                if c["trigger"] == "gold-welcome":
                    c["id"] = "(named after the override's event, whose id the admin endpoint draws)"
        differ = {k: (a.states[m].get(k), b.states[m].get(k)) for k in set(a.states[m]) | set(b.states[m])
                  if not similar(a.states[m].get(k), b.states[m].get(k), k)}
        assert not differ, (m, differ)
    assert a.bindings == b.bindings
    assert not [k for k in a.held if k.startswith("parked:")], "the held refund was applied after its payment"
    assert a.counters[members[1]]["sv_balance"] == 50_000 - 8_000


def test_a_write_redis_lost_that_moved_no_points_is_found_by_its_sequence_number(worker_factory: Any) -> None:
    """A hold changes a member's state and no balance: Redis losing that write (as an AOF
    cut short would: the member's seq and state as before it) leaves the balances equal to
    the ledger, but the member's seq is below the one its stored state carries; `loyalty
    reconcile` reports the holds differing, and `--repair` restores the member from it."""
    import redis as redis_client

    w: WorkerProcess = worker_factory("seq-behind")
    w.start()
    m = f"sb-{uuid.uuid4().hex[:8]}"
    assert w.send_callback(pay(m, 1, 50_000))[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1].get("balance", 0) > 0, 60, "the payment")
    w.wait_caught_up(60)
    client = redis_client.Redis.from_url(w.redis_url, decode_responses=True)
    key = f"{w.run_id}:m:{{{m}}}"
    seq, state = client.hget(key, "seq"), client.hget(key, "state")
    hold = [("/v1/holds", {"member_id": m, "points": 100, "ttl_seconds": 3600}, f"hold-{m}")]
    assert asyncio.run(post_signed_many(w, hold, 1))[0][0] == 201
    w.wait_caught_up(60)
    assert "holds" in orjson.loads(client.hget(key, "state"))
    client.hset(key, mapping={"seq": seq, "state": state})  # the write Redis lost
    client.close()

    rec = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile"], env=w.env, capture_output=True,
                         text=True, timeout=120)
    assert rec.returncode == 1 and "mismatches 0" in rec.stdout, rec.stdout
    (holds,) = [ln for ln in rec.stdout.splitlines() if ln.strip().startswith("holds ")]
    assert " 1 differ" in holds, rec.stdout
    out = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--repair"], env=w.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(1 found by their stored state's sequence number)" in out.stdout, out.stdout
    view = w.get(f"/v1/members/{m}")[1]
    assert view["available"] == view["balance"] - 100, view
    # The hold is the one that was given: confirming it with its payment spends it.
    p = pay(m, 2, 10_000) | {"hold_id": f"hold-{m}", "points_used": 100}
    assert w.send_callback(p)[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1]["events"] == 2, 60, "the payment that confirms the hold")
    after = w.get(f"/v1/members/{m}")[1]
    assert after["available"] == after["balance"] and after["balance"] < view["balance"] + 100, (view, after)
