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
    log.info("rebuilt %d members from the ledger (%d..%d of %d)", len(members), offset, offset + len(members), total)
    done = offset + len(members)
    return {"total": total, "rebuilt": len(members), "next_offset": done if done < total else None}
