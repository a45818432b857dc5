"""Disaster recovery: Redis state rebuilt from the ClickHouse ledger, a page of
members at a time (the worker owns the embedded store, so this runs in it)."""

from __future__ import annotations

import logging
import time
from itertools import groupby
from typing import Any

import orjson

import core_ext
from streams.app import runtime
from streams.state import first_row

log = logging.getLogger(__name__)


async def rebuild_page(offset: int, limit: int) -> dict[str, Any]:
    """Rebuilds the members at [offset, offset + limit) of the ledger's member list."""
    rt = await runtime.started()
    total = int((await rt.ledger.query("ledger_member_count"))[0]["members"])
    members = [r["member_id"] for r in await rt.ledger.query("ledger_members_page",
                                                             {"offset": offset, "limit": limit})]
    if not members:
        return {"total": total, "rebuilt": 0, "next_offset": None}
    await rebuild_members(members)
    log.info("rebuilt %d members from the ledger (%d..%d of %d)", len(members), offset, offset + len(members), total)
    done = offset + len(members)
    return {"total": total, "rebuilt": len(members), "next_offset": done if done < total else None}


async def rebuild_members(members: list[str]) -> None:
    """Rebuilds these members' Redis state from their ledger rows."""
    rt = await runtime.started()
    rows = await rt.ledger.query("ledger_rows_of_members", {"members": members})
    now_ms = int(time.time() * 1000)
    b = rt.balances
    pipe = b.redis.pipeline(transaction=False)
    reviews: dict[str, int] = {}
    checks: dict[str, int] = {}
    for member_id, member_rows in groupby(rows, key=lambda r: r["member_id"]):
        items = list(member_rows)
        for r in items:
            r["explain"] = orjson.loads(r["explain"] or "[]")
            r["lots"] = orjson.loads(r["lots"] or "[]")
        state, balance, records, review_at, next_check = core_ext.rebuild_member(
            rt.rules, orjson.dumps(items).decode(), now_ms)
        by_event: dict[str, list[dict[str, Any]]] = {}
        nets: dict[str, int] = {}
        for r in items:
            by_event.setdefault(r["event_id"], []).append(r)
            nets[r["event_id"]] = nets.get(r["event_id"], 0) + r["points"]
        key = b.member_key(member_id)
        pipe.hset(key, mapping={
            "balance": balance, "state": state,
            # As the live paths count them: each event's net movement, in or out.
            "earned": sum(n for n in nets.values() if n > 0),
            "debited": -sum(n for n in nets.values() if n < 0),
            "events": len(records),
        })
        pipe.hincrby(key, "seq", 1)  # a computation in flight against the lost state must retry
        entries: dict[str, str] = {}
        for event_id, kind, amount, points, record in records:
            event_rows = by_event[event_id]
            applied = int(event_rows[0].get("processed_at_ms", now_ms))
            if record is None and kind == "redeem":
                result = orjson.dumps({"redemption_id": event_id, "status": "redeemed", "member_id": member_id,
                                       "points": -points, "value_fen": amount}).decode()
                record = f"J|{applied}|" + orjson.dumps({
                    "kind": kind, "amount": amount, "points": points, "result": result, "used": 0,
                    "refunded_amount": 0, "refunded_points": 0, "returned_used": 0,
                    "rows": orjson.dumps(event_rows).decode()}).decode()
            elif record is None:
                record = f"M|{applied}|{0:016x}|{points}"
            entries[event_id] = record
        if entries:
            pipe.hset(b.records_key(member_id), mapping=entries)
            pipe.expire(b.records_key(member_id), b.horizon_days * 86_400 + 86_400)
        recent = list(dict.fromkeys(r["event_id"] for r in items))[-b.history_len:]
        history = [h for h in (first_row(orjson.dumps(by_event[e]).decode()) for e in recent) if h]
        pipe.delete(b.history_key(member_id))
        if history:
            pipe.lpush(b.history_key(member_id), *history)
        if review_at is not None:
            reviews[member_id] = review_at
        if next_check is not None:
            checks[member_id] = next_check
    await pipe.execute()
    await b.schedule(b.tier_reviews_key, reviews)
    await b.schedule(b.wallet_checks_key, checks)


async def repair() -> dict[str, Any]:
    """After Redis lost its last writes (a machine that crashed within `appendfsync
    everysec`'s second, an AOF cut short): the members whose Redis state is behind the
    ledger are rebuilt from it. A member is behind when the ledger has events Redis has no
    record of, and Redis none the ledger lacks; one with events the ledger does not have
    yet (rows on their way through the ledger topic) is left alone, to be repaired by a
    later run once the ledger has caught up (rebuilding it now would drop those events).
    Budgets are set to what the ledger shows given (restore_budgets). Run it while no worker
    is applying events (the agents stopped, or every topic consumed and the callbacks held):
    then the ledger is the whole truth."""
    from streams.reports import reconcile

    rt = await runtime.started()
    before = await reconcile(every_mismatch=True)
    mismatched = [m["member_id"] for m in before["mismatches"]]
    behind, ahead = [], []
    for start in range(0, len(mismatched), 500):
        page = mismatched[start:start + 500]
        in_ledger: dict[str, set[str]] = {m: set() for m in page}
        for r in await rt.ledger.query("ledger_events_of_members", {"members": page}):
            in_ledger[r["member_id"]].add(r["event_id"])
        for m in page:
            in_redis = set(await rt.balances.redis.hkeys(rt.balances.records_key(m)))
            (ahead if in_redis - in_ledger[m] else behind).append(m)
    for start in range(0, len(behind), 500):
        await rebuild_members(behind[start:start + 500])
    budgets = await restore_budgets()
    after = await reconcile()
    log.warning("repair: %d members behind the ledger rebuilt, %d ahead of it left for a later run; "
                "mismatches %d -> %d", len(behind), len(ahead), before["mismatch_count"], after["mismatch_count"])
    return {"mismatches_before": before["mismatch_count"], "rebuilt": len(behind), "rebuilt_members": behind[:100],
            "budgets_changed": budgets,
            "ahead_of_the_ledger": ahead[:100], "after": after}


async def restore_budgets() -> dict[str, int]:
    """Sets each budget's `spent` in Redis to what the ledger shows it gave, plus the units
    of reservations whose events the ledger does not have (still in flight, or never
    applied), and drops the reservations whose events it has (their settle was lost with
    Redis's last writes). Exact when no worker is applying (how `loyalty reconcile --repair`
    is run); returns the change per budget (+ raised, - lowered)."""
    rt = await runtime.started()
    b = rt.balances
    given = {r["budget_id"]: int(r["units"]) for r in await rt.ledger.query("budgets_spent")}
    changed: dict[str, int] = {}
    for budget_id, _limit in rt.rules.budgets:
        key = b.budget_key(budget_id)
        fields = await b.redis.hgetall(key)
        reserved = {f[2:]: int(v.split("|", 1)[0]) for f, v in fields.items() if f.startswith("r:")}
        done: set[str] = set()
        ids = list(reserved)
        for start in range(0, len(ids), 1000):
            done |= {r["event_id"] for r in await rt.ledger.query("ledger_events_present",
                                                                   {"ids": ids[start:start + 1000]})}
        target = given.get(budget_id, 0) + sum(u for e, u in reserved.items() if e not in done)
        current = int(fields.get("spent", 0))
        pipe = b.redis.pipeline(transaction=True)
        if target != current:
            pipe.hset(key, "spent", target)
            changed[budget_id] = target - current
        if done:
            pipe.hdel(key, *[f"r:{e}" for e in done])
        await pipe.execute()
    if changed:
        log.warning("budgets set to what the ledger shows given: %s", changed)
    return changed
