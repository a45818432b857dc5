"""The operators' reports, apart from the views that serve them: Redis (points, wallets,
stored value) against the ledger, refunds held, a day's settlement statement."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson

import core_ext
from streams.app import runtime


async def reconcile(every_mismatch: bool = False) -> dict[str, Any]:
    """Compares every member's Redis balance with the sum of their ledger rows (the first
    100 mismatches listed, or all of them)."""
    rt = await runtime.started()
    states = await rt.balances.states()
    redis_balances = {m: b for m, (b, _) in states.items()}
    ledger = {r["member_id"]: int(r["points"]) for r in await rt.ledger.query("ledger_balances")}
    mismatches = []
    for m in sorted(set(redis_balances) | set(ledger)):
        balance, state_json = states.get(m, (0, None))
        wallet = core_ext.wallet_total(state_json)
        if balance != ledger.get(m, 0) or balance != wallet:
            mismatches.append({"member_id": m, "redis": balance, "ledger": ledger.get(m, 0), "wallet": wallet})
    return {
        "members": len(set(redis_balances) | set(ledger)),
        "redis_total": sum(redis_balances.values()),
        "ledger_total": sum(ledger.values()),
        "mismatches": mismatches if every_mismatch else mismatches[:100],
        "mismatch_count": len(mismatches),
        "clean": not mismatches,
    }


async def held_refunds(limit: int = 1000) -> dict[str, Any]:
    """Refunds held for a payment not applied yet, oldest first, with their deadlines."""
    rt = await runtime.started()
    total, entries = await rt.balances.held_list(limit)
    now_ms, wait_ms = int(time.time() * 1000), rt.settings.held_wait_s * 1000
    for e in entries:
        e["held_for_s"] = max(0, (now_ms - (e["deadline_ms"] - wait_ms)) // 1000)
        e["deadline"] = dt.datetime.fromtimestamp(e["deadline_ms"] / 1000, dt.UTC).isoformat(timespec="seconds")
    return {"payments": total, "refunds": sum(e["refunds"] for e in entries), "wait_s": rt.settings.held_wait_s,
            "held": entries}


async def settlement_statement(day: dt.date, bu: str = "", merchant: str = "") -> dict[str, Any]:
    rt = await runtime.started()
    offset_s = int(rt.rules.utc_offset_minutes) * 60
    params = {"day": day, "bu": bu, "merchant": merchant, "offset_s": offset_s}
    accounts = await rt.ledger.query("settlement_statement", params)
    ledger = (await rt.ledger.query("ledger_day_points", params))[0]
    members_points = sum(int(a["points"]) for a in accounts if a["account"] == "members")
    positions = []
    for a in accounts:
        amount = int(a["amount_fen"])
        if a["account"].startswith(("bu:", "merchant:")) and amount != 0:
            positions.append({"party": a["account"], "amount_fen": abs(amount),
                              "direction": "is owed" if amount > 0 else "owes"})
    return {
        "date": day.isoformat(), "bu": bu or None, "merchant": merchant or None,
        "accounts": [{"account": a["account"], "amount_fen": int(a["amount_fen"]), "points": int(a["points"]),
                      "lines": int(a["lines"])} for a in accounts],
        "positions": positions,
        "balanced": sum(int(a["amount_fen"]) for a in accounts) == 0 and sum(int(a["points"]) for a in accounts) == 0,
        "ledger_points": int(ledger["points"] or 0),
        "members_points": members_points,
        "ties_out": members_points == int(ledger["points"] or 0),
    }


async def stored_value_reconcile() -> dict[str, Any]:
    """Every member's stored value: Redis balance = state = sum of its ledger rows."""
    rt = await runtime.started()
    redis = await rt.balances.sv_balances()
    ledger = {r["member_id"]: int(r["amount_fen"]) for r in await rt.ledger.query("stored_value_balances")}
    mismatches = []
    members = {m for m, (sv, st) in redis.items() if sv or (st and '"sv_fen"' in st)} | set(ledger)
    for m in sorted(members):
        sv, state = redis.get(m, (0, None))
        in_state = int(orjson.loads(state).get("sv_fen", 0)) if state else 0
        if not sv == in_state == ledger.get(m, 0):
            mismatches.append({"member_id": m, "redis": sv, "state": in_state, "ledger": ledger.get(m, 0)})
    return {"members": len(members), "redis_total_fen": sum(v for v, _ in redis.values()),
            "ledger_total_fen": sum(ledger.values()), "mismatches": mismatches[:100],
            "mismatch_count": len(mismatches), "clean": not mismatches}
