"""Settlement over the real services: a payment with points used produces the exact
split and pool lines, a partial refund reverses its share, a redemption pays the
business unit from the pool, and the day's statement balances and ties out."""

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

RULES = rules_toml("""
version = "settle-1"
utc_offset_minutes = 480
""", "mall", "convenience", "normal_tier", tail="""
[[merchants]]
id = "shop-c"
bu = "mall"
category = "fashion"
commission_bp = 550
commission_min_fen = 100
[wallet]
[wallet.default_rate]
points = 100
value_fen = 100
[[wallet.bu_rates]]
bu = "cvs"
points = 100
value_fen = 500
[settlement]
default_fund_fen_per_100 = 50
breakage_to = "mall"
[[settlement.bus]]
bu = "cvs"
fund_fen_per_100 = 80
paid_fen_per_100 = 300
""")


def settled_worker(worker_factory: Any, tmp_path: Path, name: str, rules_text: str = RULES
                   ) -> tuple[WorkerProcess, str, dt.date, str]:
    """A started worker on these rules, a fresh member id, today's local date and now."""
    rules = tmp_path / "settle.toml"
    rules.write_text(rules_text)
    w: WorkerProcess = worker_factory(name, LOYALTY_RULES=str(rules))
    w.start()
    day = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    return w, f"s-{uuid.uuid4().hex[:8]}", day, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def test_split_pool_and_statement(worker_factory: Any, tmp_path: Path) -> None:
    w, m, day, now = settled_worker(worker_factory, tmp_path, "settle")
    first = {"event_id": f"p1-{m}", "type": "payment", "occurred_at": now, "member_id": m, "bu_id": "mall",
             "merchant_id": "shop-c", "category": "fashion", "amount_fen": 100_000, "channel": "wechat"}
    assert w.send_callback(first)[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[0] == 200, timeout=30, what="the first payment")
    # 1,000 points earned; now 300 of them pay part of a second payment at the same shop.
    second = first | {"event_id": f"p2-{m}", "amount_fen": 20_000, "points_used": 300}
    assert w.send_callback(second)[0] == 202
    refund = second | {"event_id": f"r2-{m}", "type": "refund", "refund_of": f"p2-{m}", "amount_fen": 5_000}
    refund.pop("points_used")
    assert w.send_callback(refund)[0] == 202
    body = orjson.dumps({"member_id": m, "bu_id": "cvs", "kind": "cash_offset", "points": 100})
    status, _ = w.post("/v1/redemptions", body, {**w.pos_headers(body),
                                                 "Idempotency-Key": f"rd-{m}"})
    assert status == 201

    def member_rows() -> int:
        return len(w.get(f"/v1/members/{m}/ledger")[1]["rows"])
    w.wait_until(lambda: member_rows() >= 5, timeout=30, what="the ledger rows")

    status, st = w.get(f"/v1/admin/settlement/statement?date={day}&merchant=shop-c", admin=True)
    assert status == 200, st
    acc = {a["account"]: a for a in st["accounts"]}
    # Payment 1: 100,000 fen, commission 5.5% = 5,500; 1,000 points funded at 0.5 fen = 500.
    # Payment 2: 20,000 fen, commission 1,100; 300 points offset worth 300 fen, paid by the pool;
    #            200 points earned, funded 100.
    # Refund of 5,000 (a quarter): reverses 275 commission, 4,725 merchant, 75 offset; claws back 50
    #            points (funding 25) and returns 75 used points.
    assert acc["gateway"]["amount_fen"] == -(100_000 + 20_000 - 5_000)
    assert acc["merchant:shop-c"]["amount_fen"] == (94_500 + 18_900 + 300) - (4_725 + 75)
    assert acc["bu:mall"]["amount_fen"] == (5_500 - 500) + (1_100 - 100) - (275 - 25)
    assert acc["pool"]["amount_fen"] == 500 + 100 - 300 - 25 + 75
    assert acc["members"]["points"] == 1_000 + 200 - 300 - 50 + 75
    assert st["balanced"] and st["ties_out"]

    status, cvs = w.get(f"/v1/admin/settlement/statement?date={day}&bu=cvs", admin=True)
    acc = {a["account"]: a for a in cvs["accounts"]}
    assert acc["bu:cvs"]["amount_fen"] == 300 and acc["pool"]["amount_fen"] == -300  # 100 points at 3 fen
    assert acc["members"]["points"] == -100 and cvs["balanced"]
    assert {"party": "bu:cvs", "amount_fen": 300, "direction": "is owed"} in cvs["positions"]

    out = subprocess.run([sys.executable, "-m", "streams.cli", "settlement", "statement", "--date", str(day)],
                         env=w.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "balanced: yes; points tie out to the ledger: yes" in out.stdout


def test_a_refund_books_where_its_payment_was(worker_factory: Any, tmp_path: Path) -> None:
    """A refund takes its payment's business unit, merchant and category; one whose
    callback names others is dead-lettered naming the field and both values."""
    w, m, day, now = settled_worker(worker_factory, tmp_path, "rebook")
    pay = {"event_id": f"p-{m}", "type": "payment", "occurred_at": now, "member_id": m, "bu_id": "cvs",
           "merchant_id": f"cvs-{m}", "category": "snacks", "amount_fen": 58_800, "channel": "wechat"}
    assert w.send_callback(pay)[0] == 202
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[0] == 200, timeout=30, what="the payment")
    refund = pay | {"type": "refund", "refund_of": f"p-{m}"}
    elsewhere = refund | {"event_id": f"r1-{m}", "bu_id": "mall", "merchant_id": "shop-c", "category": "fashion"}
    assert w.send_callback(elsewhere)[0] == 202
    assert w.send_callback(refund | {"event_id": f"r2-{m}"})[0] == 202

    def member_rows() -> list[dict[str, Any]]:
        return list(w.get(f"/v1/members/{m}/ledger")[1]["rows"])
    w.wait_until(lambda: len(member_rows()) >= 2, timeout=30, what="the full refund's row")
    letters = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{w.run_id}.dead-letter"))
    mine = [d for d in letters if f"r1-{m}" in (d.get("body") or "")]
    assert len(mine) == 1, letters
    assert mine[0]["source"] == "accrual" and mine[0]["field"] == "bu_id", mine[0]
    assert '"mall"' in mine[0]["reason"] and '"cvs"' in mine[0]["reason"], mine[0]
    rows = {r["event_id"]: r for r in member_rows()}
    assert set(rows) == {f"p-{m}", f"r2-{m}"}
    back = rows[f"r2-{m}"]
    assert (back["bu_id"], back["merchant_id"], back["format"]) == ("cvs", f"cvs-{m}", "convenience"), back
    assert w.get(f"/v1/members/{m}")[1]["balance"] == 0
    # The payment and its refund cancel out at the merchant and the business unit.
    status, st = w.get(f"/v1/admin/settlement/statement?date={day}&merchant=cvs-{m}", admin=True)
    assert status == 200, st
    acc = {a["account"]: a for a in st["accounts"]}
    assert acc[f"merchant:cvs-{m}"]["amount_fen"] == 0, acc
    assert acc["gateway"]["amount_fen"] == 0, acc
    assert st["balanced"], st


def test_commission_rounds_half_up_by_default(worker_factory: Any, tmp_path: Path) -> None:
    """14.55 yuan at 5% is 72.75 fen of commission: booked 73 (half up), not 72."""
    rules = RULES.replace("[settlement]\n", "[settlement]\ndefault_commission_bp = 500\n")
    w, m, day, now = settled_worker(worker_factory, tmp_path, "rounding", rules)
    pay = {"event_id": f"p-{m}", "type": "payment", "occurred_at": now, "member_id": m, "bu_id": "cvs",
           "merchant_id": f"cvs-{m}", "category": "snacks", "amount_fen": 1_455, "channel": "wechat"}
    assert w.send_callback(pay)[0] == 202
    w.wait_until(lambda: len(w.get(f"/v1/members/{m}/ledger")[1]["rows"]) == 1, timeout=30, what="the payment row")
    status, st = w.get(f"/v1/admin/settlement/statement?date={day}&merchant=cvs-{m}", admin=True)
    assert status == 200, st
    acc = {a["account"]: a for a in st["accounts"]}
    assert acc[f"merchant:cvs-{m}"]["amount_fen"] == 1_455 - 73, acc
    assert st["balanced"], st
