"""Refunds that wait for a payment, over the real services: a refund whose payment never
comes (or that names another member than its payment's) is held, listed by the admin
endpoint and `loyalty held`, counted by the gauges, and dead-lettered with the reason
when its wait runs out; one whose payment arrives in time is applied, not dead-lettered."""

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

from streams.devtools import WorkerProcess, read_dead_letters
from streams.settings import Settings

pytestmark = pytest.mark.integration

WAIT_S = 6
RULES = """
version = "held-1"
utc_offset_minutes = 480
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "sh-mall"
format = "mall"
[[tiers]]
id = "normal"
multiplier_pct = 100
"""


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
