"""Refunds over the real services: refunds that wait for a payment — a refund whose payment never
comes (or that names another member than its payment's) is held, listed by the admin
endpoint and `loyalty held`, counted by the gauges, and dead-lettered with the reason
when its wait runs out; one whose payment arrives in time is applied, not dead-lettered —
and what a refund undoes: points used come back into their lots, a tier reached with the
refunded spend is re-checked, and a rebuild from the ledger gives the same."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess, read_dead_letters
from streams.settings import Settings
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration

WAIT_S = 6
RULES = rules_toml("""
version = "held-1"
utc_offset_minutes = 480
""", "normal_tier", tail="""
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "sh-mall"
format = "mall"
""")


def _payment(event_id: str, member: str, amount: int = 10_000) -> dict[str, Any]:
    return {"event_id": event_id, "type": "payment", "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
            "member_id": member, "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion",
            "amount_fen": amount, "channel": "wechat"}


def _refund(event_id: str, member: str, of: str, amount: int = 10_000) -> dict[str, Any]:
    return _payment(event_id, member, amount) | {"type": "refund", "refund_of": of}


def _letters(w: WorkerProcess) -> dict[str, dict[str, Any]]:
    records = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{w.run_id}.dead-letter",
                                            wait_s=2))
    return {r["event_id"]: r for r in records if r.get("event_id")}


def test_held_refunds_are_listed_then_dead_lettered_at_their_deadline(worker_factory: Any, tmp_path: Path) -> None:
    rules = tmp_path / "held.toml"
    rules.write_text(RULES)
    w: WorkerProcess = worker_factory("held", LOYALTY_HELD_WAIT_S=str(WAIT_S), LOYALTY_RULES=str(rules))
    w.start()
    tag = uuid.uuid4().hex[:8]
    m, other = f"h-{tag}", f"o-{tag}"
    # The other member's payment: a refund naming it under m is not m's payment.
    assert w.send_callback(_payment(f"po-{tag}", other))[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{other}")[0] == 200, timeout=30, what="the other member's payment")
    assert w.send_callback(_payment(f"p0-{tag}", m, 5_000))[0] == 202
    never = _refund(f"r-never-{tag}", m, f"p-never-{tag}")
    stranger = _refund(f"r-other-{tag}", m, f"po-{tag}")
    early = _refund(f"r-early-{tag}", m, f"p-late-{tag}", 4_000)
    for body in (never, stranger, early):
        assert w.send_callback(body)[0] == 202

    def held() -> dict[str, Any]:
        status, body = w.get("/v1/admin/held")
        assert status == 200, body
        return {e["payment_id"]: e for e in body["held"]}
    w.wait_until(lambda: {f"p-never-{tag}", f"po-{tag}", f"p-late-{tag}"} <= set(held()), timeout=30,
                 what="three payments with a refund held")
    entry = held()[f"p-never-{tag}"]
    assert (entry["member_id"], entry["refunds"]) == (m, 1) and entry["held_for_s"] <= WAIT_S, entry
    out = subprocess.run([sys.executable, "-m", "streams.cli", "held", "--json"], env=w.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"p-never-{tag}" in {e["payment_id"] for e in orjson.loads(out.stdout)["held"]}

    # The late payment arrives in time: its refund is applied (5,000 + 10,000 - 4,000 fen).
    assert w.send_callback(_payment(f"p-late-{tag}", m))[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1]["balance"] == 50 + 100 - 40, timeout=30,
                 what="the late payment and its refund")

    w.wait_until(lambda: {f"r-never-{tag}", f"r-other-{tag}"} <= set(_letters(w)), timeout=WAIT_S + 30,
                 what="the two refunds dead-lettered at their deadline")
    letters = _letters(w)
    for eid, payment in ((f"r-never-{tag}", f"p-never-{tag}"), (f"r-other-{tag}", f"po-{tag}")):
        letter = letters[eid]
        assert letter["source"] == "accrual" and letter["field"] == "refund_of", letter
        assert payment in letter["reason"] and f"within {WAIT_S} s" in letter["reason"], letter
    assert f"r-early-{tag}" not in letters
    w.wait_until(lambda: not held(), timeout=30, what="nothing held any more")
    metrics = w.metrics()
    assert metrics["refunds_expired_total"] == 2, metrics
    assert metrics["refunds_released_total"] == 1, metrics
    w.wait_until(lambda: w.metrics()["refunds_held_payments"] == 0, timeout=WAIT_S + 30, what="the gauge at 0")
    # Nothing moved for the refunds that never applied: m has its two payments less the early refund.
    assert w.get(f"/v1/members/{m}")[1]["balance"] == 110
    assert w.get(f"/v1/members/{other}")[1]["balance"] == 100


TIER_RULES = rules_toml("""
version = "refund-tier-1"
utc_offset_minutes = 480
""", "normal_tier", tail="""
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "sh-mall"
format = "mall"
[tier_policy]
on_refund = "recheck"
[[tiers]]
id = "silver"
multiplier_pct = 120
qualify_spend_fen = 500000
[wallet]
validity_months = 3
[wallet.default_rate]
points = 100
value_fen = 100
""")


def test_a_refund_gives_used_points_back_to_their_lots_and_rechecks_the_tier(
        worker_factory: Any, tmp_path: Path) -> None:
    import redis

    rules = tmp_path / "tier.toml"
    rules.write_text(TIER_RULES)
    w: WorkerProcess = worker_factory("rtier", LOYALTY_RULES=str(rules))
    w.start()
    m = f"t-{uuid.uuid4().hex[:8]}"
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=70)
    earlier = _payment(f"old-{m}", m, 200_000) | {"occurred_at": old.isoformat()}
    # 4,000 yuan paid with the 2,000 old points: 6,000 yuan in the window makes silver.
    big = _payment(f"big-{m}", m, 400_000) | {"points_used": 2_000}
    for body in (earlier, big):
        assert w.send_callback(body)[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1].get("events") == 2, timeout=30, what="two payments")
    got = w.get(f"/v1/members/{m}")[1]
    assert (got["tier"], got["balance"], got["lots"][0][1]) == ("silver", 4_000, 4_000), got

    # The goods go back: 4,000 points taken back, the 2,000 used come back into the old
    # month's lot (its own expiry), and the tier reached with the refund's spend is gone.
    assert w.send_callback(_refund(f"rf-{m}", m, f"big-{m}", 400_000))[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1].get("events") == 3, timeout=30, what="the refund")
    got = w.get(f"/v1/members/{m}")[1]
    local = old + dt.timedelta(hours=8)
    old_month = f"{local.year:04d}-{local.month:02d}"
    assert got["balance"] == 2_000 and [lot[:2] for lot in got["lots"]] == [[old_month, 2_000]], got
    assert got["tier"] == "normal" and got["review_at_ms"] is None, got

    def change_row() -> dict[str, Any] | None:
        rows = w.get(f"/v1/members/{m}")[1]["recent_movements"]
        return next((r for r in rows if r["kind"] == "tier_change" and r["event_id"] == f"rf-{m}"), None)
    w.wait_until(lambda: change_row() is not None, timeout=30, what="the tier change in the history")
    assert change_row()["explain"][0] == {"rule": "refund", "id": "silver->normal", "points": 0}  # type: ignore[index]
    back = next(r for r in w.get(f"/v1/members/{m}")[1]["recent_movements"] if r["kind"] == "return")
    assert back["lots"] == [[local.year * 12 + local.month - 1, 2_000]], back

    # The same wallet and tier come back from the ledger alone.
    fields = ("balance", "lots", "tier", "window_spend_fen")
    before = {k: got[k] for k in fields}
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=60, what="reconcile")
    client = redis.Redis.from_url(Settings.from_env().redis_url)
    for key in client.scan_iter(match=f"{w.run_id}:*", count=1000):
        client.delete(key)
    out = subprocess.run([sys.executable, "-m", "streams.cli", "rebuild"], env=w.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    after = w.get(f"/v1/members/{m}")[1]
    assert {k: after[k] for k in fields} == before, after
