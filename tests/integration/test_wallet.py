"""The points wallet over the real services: redemptions (idempotent, atomic, never
overdrawn), reversal to the same lots, pending points, expiry and reminders, refund
shortfall policies, the ledger history and reconciliation."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.workers import WorkerProcess, read_dead_letters, send_callbacks_in_order
from streams.settings import Settings
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration

RULES = rules_toml("""
version = "wallet-1"
utc_offset_minutes = 480
""", "mall", "convenience", "normal_tier", tail="""
[[categories]]
id = "electronics"
points = 1
per_fen = 100
return_window_days = 7
[wallet]
validity_months = VALIDITY
reminder_days = 365
refund_shortfall = "SHORTFALL"
lottery_cost_points = 500
[wallet.default_rate]
points = 100
value_fen = 100
[[wallet.bu_rates]]
bu = "cvs"
points = 100
value_fen = 500
""")


def start(worker_factory: Any, tmp_path: Path, name: str, shortfall: str = "allow_negative",
          validity: int = 24) -> WorkerProcess:
    rules = tmp_path / f"{name}.toml"
    rules.write_text(RULES.replace("SHORTFALL", shortfall).replace("VALIDITY", str(validity)))
    w: WorkerProcess = worker_factory(name, LOYALTY_RULES=str(rules), LOYALTY_WALLET_CHECK_INTERVAL="1")
    w.start()
    return w


def at(days_ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).isoformat(timespec="seconds")


def pay(member: str, amount: int, category: str = "fashion", when: str | None = None) -> dict[str, Any]:
    return {"event_id": f"tx-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": when or at(),
            "member_id": member, "bu_id": "mall", "merchant_id": "s1", "category": category,
            "amount_fen": amount, "channel": "wechat"}


def refund(p: dict[str, Any], amount: int) -> dict[str, Any]:
    return {**p, "event_id": f"{p['event_id']}-rf", "type": "refund", "refund_of": p["event_id"],
            "amount_fen": amount, "occurred_at": at()}


def view(w: WorkerProcess, member: str) -> dict[str, Any]:
    status, body = w.get(f"/v1/members/{member}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_events(w: WorkerProcess, member: str, n: int) -> dict[str, Any]:
    def done() -> bool:
        status, body = w.get(f"/v1/members/{member}")
        return status == 200 and body["events"] >= n
    w.wait_until(done, timeout=60, what=f"{n} events of {member}")
    return view(w, member)


def redeem(w: WorkerProcess, key: str, member: str, **req: Any) -> tuple[int, Any]:
    body = orjson.dumps({"member_id": member, "bu_id": "mall", "kind": "cash_offset", **req})
    return w.post("/v1/redemptions", body, {**w.pos_headers(body), "Idempotency-Key": key})


def reverse(w: WorkerProcess, redemption_id: str, member: str) -> tuple[int, Any]:
    body = orjson.dumps({"member_id": member})
    return w.post(f"/v1/redemptions/{redemption_id}/reverse", body, w.pos_headers(body))


def member_id() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


def test_redeem_is_idempotent_fifo_and_reversible(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "redeem")
    m = member_id()
    old, new = pay(m, 30_000, when=at(70)), pay(m, 50_000)
    asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, [orjson.dumps(old), orjson.dumps(new)]))
    before = wait_events(w, m, 2)
    assert before["available"] == 800 and [lot[1] for lot in before["lots"]] == [300, 500]

    status, first = redeem(w, "r-1-" + m, m, points=400)
    assert status == 201 and first["value_fen"] == 400
    assert [(lot["points"]) for lot in first["lots"]] == [300, 100]  # the oldest lot first
    status, again = redeem(w, "r-1-" + m, m, points=400)
    assert (status, again) == (200, first)
    after = view(w, m)
    assert (after["balance"], after["available"]) == (400, 400)

    body = orjson.dumps({"member_id": m, "bu_id": "cvs", "kind": "cash_offset", "points": 200})
    status, cvs = w.post("/v1/redemptions", body, {**w.pos_headers(body),
                                                   "Idempotency-Key": "r-2-" + m})
    assert status == 201 and cvs["value_fen"] == 1000  # 100 points = 5 yuan at the convenience store

    status, short = redeem(w, "r-3-" + m, m, points=201)
    assert status == 409 and short["available"] == 200 and short["needed"] == 201
    status, lottery = redeem(w, "r-4-" + m, m, kind="lottery", draws=1)
    assert status == 409 and lottery["needed"] == 500

    status, rev = reverse(w, "r-1-" + m, m)
    assert status == 201 and rev["points"] == 400
    assert reverse(w, "r-1-" + m, m) == (200, rev)
    restored = view(w, m)
    assert restored["balance"] == 600
    assert [lot[1] for lot in restored["lots"]] == [300, 300]  # the same lots came back
    assert reverse(w, "nope-" + m, m)[0] == 404

    assert redeem(w, "r-5-" + m, m, points=-5)[0] == 400
    assert redeem(w, "r-6-" + m, m, kind="teleport", points=5)[0] == 400
    body = orjson.dumps({"member_id": m, "bu_id": "mall", "kind": "cash_offset", "points": 1})
    assert w.post("/v1/redemptions", body, w.pos_headers(body))[0] == 400  # no key

    def in_ledger() -> bool:
        status, page = w.get(f"/v1/members/{m}/ledger?limit=2")
        return status == 200 and len(page["rows"]) == 2 and page["rows"][0]["kind"] == "reverse"
    w.wait_until(in_ledger, timeout=30, what="the history")
    status, page = w.get(f"/v1/members/{m}/ledger?limit=2")
    assert page["next_offset"] == 2 and page["rows"][1]["kind"] == "redeem"
    assert page["rows"][1]["lots"] and page["rows"][1]["explain"][0]["rule"] == "redeem"
    status, rest = w.get(f"/v1/members/{m}/ledger?limit=10&offset=2")
    assert [r["kind"] for r in rest["rows"]] == ["redeem", "earn", "earn"] and rest["next_offset"] is None
    assert w.get(f"/v1/members/{m}/ledger?from=yesterday")[0] == 400
    rec = w.get("/v1/admin/reconcile", admin=True)[1]
    assert rec["clean"], rec


def test_parallel_redemptions_never_overdraw(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "parallel")
    m = member_id()
    assert w.send_callback(pay(m, 100_000))[0] == 202
    wait_events(w, m, 1)

    async def storm() -> list[int]:
        async def one(session: aiohttp.ClientSession, i: int) -> int:
            body = orjson.dumps({"member_id": m, "bu_id": "mall", "kind": "mall_exchange", "points": 100})
            headers = {**w.pos_headers(body), "Idempotency-Key": f"p-{i}-{m}"}
            async with session.post(w.base_url + "/v1/redemptions", data=body, headers=headers) as r:
                return r.status
        async with aiohttp.ClientSession() as a, aiohttp.ClientSession() as b, aiohttp.ClientSession() as c:
            sessions = [a, b, c]
            return await asyncio.gather(*(one(sessions[i % 3], i) for i in range(40)))

    statuses = asyncio.run(storm())
    assert statuses.count(201) == 10 and statuses.count(409) == 30, statuses
    got = view(w, m)
    assert (got["balance"], got["available"]) == (0, 0)
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")


def test_buy_then_refund_inside_the_return_window_earns_nothing(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "pending")
    m = member_id()
    p = pay(m, 100_000, category="electronics")
    assert w.send_callback(p)[0] == 202
    got = wait_events(w, m, 1)
    assert (got["balance"], got["pending"], got["available"]) == (1000, 1000, 0)
    assert redeem(w, "x-" + m, m, points=1)[0] == 409  # pending points cannot be spent
    for _ in range(3):  # the same refund, three times: one effect
        assert w.send_callback(refund(p, 100_000) | {"event_id": p["event_id"] + "-rf"})[0] == 202
    got = wait_events(w, m, 2)
    assert (got["balance"], got["pending"], got["available"]) == (0, 0, 0)
    assert got["debited"] == got["clawed_back"] == 1000


def test_refund_shortfall_allow_negative_and_record_debt(worker_factory: Any, tmp_path: Path) -> None:
    for policy, after_refund, after_next in (("allow_negative", -1000, -500), ("record_debt", 0, 0)):
        w = start(worker_factory, tmp_path, f"short-{policy[:5]}", shortfall=policy)
        m = member_id()
        p = pay(m, 100_000)
        assert w.send_callback(p)[0] == 202
        wait_events(w, m, 1)
        assert redeem(w, "all-" + m, m, points=1000)[0] == 201
        assert w.send_callback(refund(p, 100_000))[0] == 202
        got = wait_events(w, m, 3)
        assert got["balance"] == after_refund, policy
        assert w.send_callback(pay(m, 50_000))[0] == 202
        got = wait_events(w, m, 4)
        assert got["balance"] == after_next, policy
        assert got["available"] == 0
        assert (got["negative"], got["owed"]) == ((500, 0) if policy == "allow_negative" else (0, 500))
        rec = w.get("/v1/admin/reconcile", admin=True)
        w.wait_until(lambda w=w: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="ledger")
        assert rec[0] == 200


def test_expiry_really_expires_and_reminds(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "expiry", validity=1)
    m = member_id()
    events = [pay(m, 20_000, when=at(100)), pay(m, 30_000, when=at(1))]
    asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, [orjson.dumps(e) for e in events]))
    # The first lot is past its month-end expiry: the scheduled check expires it.
    def expired() -> bool:
        # The history is written after the member's write (while the next batch is applied).
        status, got = w.get(f"/v1/members/{m}")
        return (status == 200 and got["events"] >= 3 and got["balance"] == 300
                and any(r["kind"] == "expire" for r in got.get("recent_movements", [])))
    w.wait_until(expired, timeout=60, what="the old lot to expire")
    got = view(w, m)
    assert [lot[1] for lot in got["lots"]] == [300]
    kinds = [r["kind"] for r in got["recent_movements"]]
    assert "expire" in kinds
    expire_row = next(r for r in got["recent_movements"] if r["kind"] == "expire")
    assert expire_row["points"] == -200 and expire_row["lots"][0][1] == 200
    notices = asyncio.run(_read_topic(f"{w.run_id}.coupon-pushes"))
    assert any(n["kind"] == "points_expiring" and n["member_id"] == m and n["points"] == 300 for n in notices)
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")


async def _read_topic(topic: str) -> list[dict[str, Any]]:
    return await read_dead_letters(Settings.from_env().kafka_bootstrap, topic)


def test_a_refund_before_its_payment_is_held_and_applied_after(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "early")
    m = member_id()
    p = pay(m, 100_000)
    assert w.send_callback(refund(p, 40_000))[0] == 202
    assert w.send_callback(pay(m, 1_000))[0] == 202  # another payment: the member exists, the refund waits
    wait_events(w, m, 1)
    assert view(w, m)["balance"] == 10
    w.wait_until(lambda: w.metrics()["refunds_held_total"] == 1, timeout=30, what="the refund to be held")
    assert w.send_callback(p)[0] == 202
    got = wait_events(w, m, 3)
    assert got["balance"] == 10 + 1000 - 400
    assert w.metrics()["refunds_released_total"] == 1
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")


def test_disaster_recovery_flush_redis_rebuild_reconcile(worker_factory: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    import redis

    w = start(worker_factory, tmp_path, "recover", shortfall="record_debt")
    members = [member_id() for _ in range(3)]
    bodies = []
    for i, m in enumerate(members):
        p = pay(m, 60_000 + i, when=at(40))
        bodies += [orjson.dumps(p), orjson.dumps(pay(m, 20_000, category="electronics")),
                   orjson.dumps(pay(m, 5_000))]
        if i == 0:
            bodies.append(orjson.dumps(refund(p, 30_000)))
    asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, bodies))
    wait_events(w, members[0], 4)
    for m in members[1:]:
        wait_events(w, m, 3)
    assert redeem(w, "keep-" + members[1], members[1], points=500)[0] == 201
    assert redeem(w, "gone-" + members[2], members[2], points=300)[0] == 201
    assert reverse(w, "gone-" + members[2], members[2])[0] == 201
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")
    fields = ("balance", "available", "pending", "lots", "tier", "negative", "owed", "window_points", "earned",
              "debited", "events")
    before = {m: {k: view(w, m)[k] for k in fields} for m in members}

    client = redis.Redis.from_url(Settings.from_env().redis_url)
    lost = 0
    for key in client.scan_iter(match=f"{w.run_id}:*", count=1000):
        lost += client.delete(key)
    assert lost > 10 and w.get(f"/v1/members/{members[0]}")[0] == 404

    out = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "--page", "2"], env=w.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "3/3 members" in out.stderr and "rebuilt 3 members" in out.stdout
    after = {m: {k: view(w, m)[k] for k in fields} for m in members}
    assert after == before
    out = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile"], env=w.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mismatches 0" in out.stdout
    # Idempotency survived: the same redemption key answers without deducting again,
    # and the member's next payment applies on top of the rebuilt state.
    assert redeem(w, "keep-" + members[1], members[1], points=500)[0] == 200
    assert w.send_callback(pay(members[1], 1_000))[0] == 202
    w.wait_until(lambda: view(w, members[1])["balance"] == before[members[1]]["balance"] + 10, timeout=30,
                 what="a payment after the rebuild")
    assert view(w, members[1])["available"] == before[members[1]]["available"] + 10


def test_a_hold_at_the_till_is_confirmed_by_its_payment_or_released(worker_factory: Any, tmp_path: Path) -> None:
    w = start(worker_factory, tmp_path, "holds")
    m = member_id()
    assert w.send_callback(pay(m, 100_000))[0] == 202
    wait_events(w, m, 1)

    def hold(key: str, points: int, ttl: int = 900) -> tuple[int, Any]:
        body = orjson.dumps({"member_id": m, "points": points, "ttl_seconds": ttl})
        return w.post("/v1/holds", body, {**w.pos_headers(body), "Idempotency-Key": key})

    status, h = hold("h1-" + m, 600)
    assert status == 201 and h["available_after"] == 400
    assert hold("h1-" + m, 600)[0] == 200  # the same hold again: no second lock
    assert hold("h2-" + m, 500)[0] == 409  # locked points cannot be spent twice
    assert redeem(w, "r-" + m, m, points=500)[0] == 409
    got = view(w, m)
    assert (got["balance"], got["available"]) == (1000, 400)

    # The payment that carries the hold confirms it: 600 points spent, 100 earned.
    p = pay(m, 10_000) | {"hold_id": "h1-" + m, "points_used": 600}
    assert w.send_callback(p)[0] == 202
    got = wait_events(w, m, 2)
    assert (got["balance"], got["available"]) == (500, 500)
    # A full refund claws back the 100 earned and returns the 600 used.
    assert w.send_callback(refund(p, 10_000) | {"hold_id": None, "points_used": None})[0] == 202
    got = wait_events(w, m, 3)
    assert (got["balance"], got["available"]) == (1000, 1000)

    # A hold released by the POS, and one that times out: the points come back.
    assert hold("h3-" + m, 300)[0] == 201
    body = orjson.dumps({"member_id": m})
    assert w.post(f"/v1/holds/h3-{m}/release", body, w.pos_headers(body))[0] == 200
    assert w.post(f"/v1/holds/h3-{m}/release", body, w.pos_headers(body))[0] == 404
    assert hold("h4-" + m, 700, ttl=1)[0] == 201
    assert view(w, m)["available"] == 300
    w.wait_until(lambda: view(w, m)["available"] == 1000, timeout=30, what="the timed-out hold to be released")
    assert view(w, m)["balance"] == 1000
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")
