"""The operators' reports, apart from the views that serve them: Redis (points, wallets,
stored value) against the ledger, refunds held, a day's settlement statement."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import orjson

import core_ext
from streams.app import runtime
from streams.state.circle import CIRCLE_KEEP_S
from streams.state.keys import PARKING_SESSION_S
from streams.state.operators import APPROVAL_KEEP_S, ERASURE_KEEP_S, MERGE_KEEP_S


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


#: Kinds of the bindings table that Redis keeps for a while, not per member: seconds kept.
KEPT_KINDS: dict[str, Callable[[Any], int]] = {
    "route": lambda s: int(s.gateway_route_days) * 86_400,
    "parking": lambda s: PARKING_SESSION_S,
    "approval": lambda s: APPROVAL_KEEP_S,
    "merge": lambda s: MERGE_KEEP_S,
    "erasure": lambda s: ERASURE_KEEP_S,
    "circle": lambda s: CIRCLE_KEEP_S,
}
#: Kinds of the bindings table whose Redis value is the row's value itself (not a member).
VALUE_KINDS = frozenset({"operator", "circle_member"})


async def reconcile_kinds() -> dict[str, Any]:
    """Redis against the durable facts, kind by kind (docs/reliability.md): each member's
    state against the state its last write stored (member_states), per kind of fact; stored
    value against its ledger; budgets and stocks against what the ledger shows given; refunds
    held against held_refunds; bindings against the bindings table. Exact when no worker is
    applying (a member's state row reaches ClickHouse just after its Redis write)."""
    from streams.durable import kind_parts, state_kinds
    from streams.recovery import budget_targets

    rt = await runtime.started()
    b = rt.balances
    states = await b.states()
    members = sorted(states)
    kinds: dict[str, dict[str, Any]] = {}
    without = 0
    for start in range(0, len(members), 1000):
        page = members[start:start + 1000]
        stored = {r["member_id"]: r["last_state"]
                  for r in await rt.ledger.query("member_states_of_members", {"members": page})}
        for m in page:
            if m not in stored:
                without += 1  # written before states were stored: the ledger rebuilds it
                continue
            live, durable = orjson.loads(states[m][1] or "{}"), orjson.loads(stored[m])
            for kind, fields in state_kinds(set(live) | set(durable)).items():
                a, d = kind_parts(live, fields), kind_parts(durable, fields)
                if not a and not d:
                    continue
                k = kinds.setdefault(kind, {"kind": kind, "checked": 0, "differ": 0, "examples": []})
                k["checked"] += 1
                if a != d:
                    k["differ"] += 1
                    if len(k["examples"]) < 5:
                        k["examples"].append(m)
    out = list(kinds.values())
    sv = await stored_value_reconcile()
    out.append({"kind": "stored value against its ledger", "checked": sv["members"],
                "differ": sv["mismatch_count"], "examples": [x["member_id"] for x in sv["mismatches"][:5]]})
    budgets = await budget_targets()
    out.append({"kind": "budgets and stocks against the ledger", "checked": len(budgets),
                "differ": sum(1 for _, cur, target, _ in budgets if cur != target),
                "examples": [f"{i}: spent {cur}, the ledger gives {t}" for i, cur, t, _ in budgets if cur != t][:5]})
    open_held: dict[str, int] = {}
    for r in await rt.ledger.query("held_refunds_open"):
        key = f"{r['member_id']}\t{r['payment_id']}"
        open_held[key] = open_held.get(key, 0) + 1
    _, entries = await b.held_list(limit=100_000)
    live_held = {f"{e['member_id']}\t{e['payment_id']}": e["refunds"] for e in entries if e["refunds"]}
    wrong = [k.replace("\t", " payment ") for k in sorted(set(open_held) | set(live_held))
             if open_held.get(k) != live_held.get(k)]
    out.append({"kind": "refunds held", "checked": len(set(open_held) | set(live_held)), "differ": len(wrong),
                "examples": wrong[:5]})
    checked = differ = 0
    examples: list[str] = []
    total = int((await rt.ledger.query("bindings_count"))[0]["bindings"])
    for offset in range(0, total, 5000):
        bindings = await rt.ledger.query("bindings_page", {"offset": offset, "limit": 5000})
        pipe = b.redis.pipeline(transaction=False)
        for r in bindings:
            key = f"{b.ns}:{r['key']}"
            if r["kind"] in KEPT_KINDS:
                pipe.exists(key)
            elif r["kind"] == "plate":
                pipe.hget(key, "member_id")
            else:
                pipe.get(key)
        now_ms = int(time.time() * 1000)
        for r, owner in zip(bindings, await pipe.execute(), strict=True):
            checked += 1
            if r["kind"] in KEPT_KINDS:
                # A parking session or gateway route: in Redis while it lasts (the TTL gone
                # by a little is Redis's expiry, not a loss).
                kept_s = KEPT_KINDS[r["kind"]](rt.settings)
                live = bool(r["value"]) and now_ms - int(r["at_ms"]) < kept_s * 1000 - 60_000
                if live and not owner:
                    differ += 1
                    if len(examples) < 5:
                        examples.append(f"{r['key']}: missing in Redis")
                continue
            if r["kind"] in VALUE_KINDS:
                if (owner or "") != r["value"]:
                    differ += 1
                    if len(examples) < 5:
                        examples.append(f"{r['key']}: Redis differs from the facts")
                continue
            if (owner or "") != r["member_id"]:
                differ += 1
                if len(examples) < 5:
                    examples.append(f"{r['key']}: Redis {owner!r}, facts {r['member_id']!r}")
    out.append({"kind": "bindings", "checked": checked, "differ": differ, "examples": examples})
    return {"kinds": out, "without_stored_state": without, "clean": all(k["differ"] == 0 for k in out)}


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
