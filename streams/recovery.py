"""Disaster recovery: Redis state rebuilt from the ClickHouse ledger, a page of
members at a time (the worker owns the embedded store, so this runs in it)."""

from __future__ import annotations

import logging
import time
from itertools import groupby
from typing import TYPE_CHECKING, Any, cast

import orjson

import core_ext
from streams.app import runtime
from streams.state import BOARD_SHARDS, BOARD_TTL_S, first_row
from streams.state.circle import CIRCLE_KEEP_S
from streams.state.jobs import OPEN_STATUSES
from streams.state.keys import PARKING_SESSION_S
from streams.state.operators import APPROVAL_KEEP_S, ERASURE_KEEP_S, MERGE_KEEP_S

if TYPE_CHECKING:
    from collections.abc import Mapping

    # redis-py's hset takes a Mapping[EncodableT, EncodableT], invariant in its key: a
    # dict[str, str] is cast to it.
    from redis.typing import EncodableT

log = logging.getLogger(__name__)


#: How long a members' event's seat and waitlist lists live after it ends.
EVENT_KEEP_MS = 30 * 86_400_000
#: Points-mall order states the expiry timer watches.
OPEN_ORDERS = ("awaiting_payment", "placed", "ready", "shipped")


async def rebuild_page(offset: int, limit: int) -> dict[str, Any]:
    """Rebuilds the members at [offset, offset + limit) of those the ledger or the stored
    states know, and the bindings at the same places of the bindings table. Each page is
    idempotent: a rebuild interrupted anywhere and run again (or resumed at a page) ends
    the same."""
    rt = await runtime.started()
    total = int((await rt.ledger.query("rebuild_member_count"))[0]["members"])
    bindings_total = int((await rt.ledger.query("bindings_count"))[0]["bindings"])
    members = [r["member_id"] for r in await rt.ledger.query("rebuild_members_page",
                                                             {"offset": offset, "limit": limit})]
    bound = await restore_bindings(offset, limit) if offset < bindings_total else 0
    held = await restore_held() if offset == 0 else 0
    guests = await restore_guests() if offset == 0 else 0
    claims = await restore_receipt_claims() if offset == 0 else 0
    if members:
        await rebuild_members(members)
        log.info("rebuilt %d members (%d..%d of %d), %d bindings", len(members), offset, offset + len(members),
                 total, bound)
    done = offset + limit
    more = done < total or done < bindings_total
    return {"total": total, "rebuilt": len(members), "bindings": bound, "bindings_total": bindings_total,
            "held_refunds": held, "guest_payments": guests, "receipt_claims": claims,
            "next_offset": done if more else None}


async def restore_receipt_claims() -> int:
    """Claims again the receipt numbers the receipts table has within their claim's life
    (each for the member who submitted it first, expiring when it would have): a receipt
    earns for one member even after Redis was lost. Returns how many."""
    rt = await runtime.started()
    days = rt.rules.receipts_max_age_days
    if days is None:
        return 0
    b = rt.balances
    life_ms = (days + 30) * 86_400_000
    rows = await rt.ledger.query("receipt_claims", {"days": days + 30})
    pipe = b.redis.pipeline(transaction=False)
    for r in rows:
        pipe.set(b.receipt_claim_key(r["receipt_id"]), r["member_id"], nx=True)
        pipe.pexpireat(b.receipt_claim_key(r["receipt_id"]), int(r["submitted_at_ms"]) + life_ms)
    await pipe.execute()
    if rows:
        log.info("claimed again %d receipt numbers", len(rows))
    return len(rows)


async def restore_guests() -> int:
    """Puts back the guest payments still waiting for their payer to register (within the
    rules' credit window, not credited, the payer bound to no one), as the accrual keeps
    them (the core's compact fact per event, the key expiring with the window); returns
    how many. Written whole per payer: running it twice changes nothing."""
    rt = await runtime.started()
    b = rt.balances
    days = int(rt.rules.guest_credit_days)
    if days <= 0:
        return 0
    now_ms = int(time.time() * 1000)
    payers: dict[tuple[str, str], dict[str, str]] = {}
    newest: dict[tuple[str, str], int] = {}
    for r in await rt.ledger.query("guest_facts_open", {"days": days}):
        fact: list[Any] = [r["type"], int(r["occurred_ms"]), int(r["amount_fen"]), r["bu_id"], r["merchant_id"],
                           r["category"], r["channel"]]
        if r["refund_of"]:
            fact.append(r["refund_of"])
        payer = (r["payer_kind"], r["payer_id"])
        payers.setdefault(payer, {})[r["event_id"]] = orjson.dumps(fact).decode()
        newest[payer] = max(newest.get(payer, 0), int(r["processed_ms"]))
    pipe = b.redis.pipeline(transaction=False)
    for (kind, payer_id), facts in payers.items():
        key = b.guest_key(kind, payer_id)
        left_s = days * 86_400 - (now_ms - newest[(kind, payer_id)]) // 1000
        if left_s <= 0:
            continue
        pipe.delete(key)
        pipe.hset(key, mapping=cast("Mapping[EncodableT, EncodableT]", facts))
        pipe.expire(key, left_s)
    await pipe.execute()
    n = sum(len(f) for f in payers.values())
    if n:
        log.info("guest payments of %d payers put back (%d payments)", len(payers), n)
    return n


async def restore_held() -> int:
    """Holds again every refund the held_refunds table says is still held (the lists, their
    index by deadline and each member's `held` count, written whole: running it twice
    holds nothing twice); returns how many refunds."""
    rt = await runtime.started()
    b = rt.balances
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in await rt.ledger.query("held_refunds_open"):
        groups.setdefault((r["member_id"], r["payment_id"]), []).append((r["held_body"], int(r["deadline"])))
    per_member: dict[str, int] = {}
    pipe = b.redis.pipeline(transaction=False)
    for (member_id, payment_id), held in groups.items():
        key = b.held_refunds_key(member_id, payment_id)
        deadline = min(d for _, d in held)
        pipe.delete(key)
        pipe.rpush(key, *[body for body, _ in held])
        pipe.pexpireat(key, deadline + 86_400_000)
        pipe.zadd(b.held_key, {f"{member_id}\t{payment_id}": deadline})
        per_member[member_id] = per_member.get(member_id, 0) + len(held)
    for member_id, n in per_member.items():
        pipe.hset(b.member_key(member_id), "held", n)
    await pipe.execute()
    if groups:
        log.info("held again %d refunds of %d payments", sum(per_member.values()), len(groups))
    return sum(per_member.values())


async def restore_bindings(offset: int, limit: int) -> int:
    """Writes a page of the bindings table back into Redis (the newest row per key; an
    unbinding deletes the key); returns how many keys were bound."""
    rt = await runtime.started()
    b = rt.balances
    pipe = b.redis.pipeline(transaction=False)
    bound = 0
    now_ms = int(time.time() * 1000)
    keep_s = {"route": rt.settings.gateway_route_days * 86_400, "parking": PARKING_SESSION_S,
              "approval": APPROVAL_KEEP_S, "merge": MERGE_KEEP_S,
              "erasure": ERASURE_KEEP_S}
    for r in await rt.ledger.query("bindings_page", {"offset": offset, "limit": limit}):
        key, kind, member_id, value = f"{b.ns}:{r['key']}", r["kind"], r["member_id"], r["value"]
        if kind in keep_s:
            # Kept for a while, not bound to a member: an empty value is one that ended.
            left_s = keep_s[kind] - (now_ms - int(r["at_ms"])) // 1000
            if not value or left_s <= 0:
                pipe.delete(key)
            elif kind in ("route", "approval", "merge", "erasure"):
                pipe.set(key, value, ex=left_s)
                if kind in OPEN_STATUSES:  # a job: listed through its indexes (streams/state/jobs.py)
                    job_id = r["key"].split(":", 1)[1]
                    pipe.zadd(b.jobs_key(kind), {job_id: int(r["at_ms"])})
                    if orjson.loads(value).get("status") in OPEN_STATUSES[kind]:  # in progress
                        pipe.zadd(b.open_jobs_key(kind), {job_id: now_ms})
                elif kind == "approval":  # listed through its index
                    asked = int(orjson.loads(value).get("requested_at_ms") or r["at_ms"])
                    pipe.zadd(b.approvals_index_key, {r["key"].split(":", 1)[1]: asked}, nx=True)
            else:
                pipe.hset(key, mapping=orjson.loads(value))
                pipe.expire(key, left_s)
            bound += 1 if value and left_s > 0 else 0
            continue
        if kind == "circle":  # a business-circle payment (streams/circle.py): pending again, or its sync cached
            record = orjson.loads(value)
            left_s = CIRCLE_KEEP_S - (now_ms - int(r["at_ms"])) // 1000
            if left_s > 0:
                pipe.set(key, value, ex=left_s)
                if record.get("status") == "pending":
                    pipe.zadd(b.circle_due_key, {record["transaction_id"]: now_ms})
                bound += 1
            continue
        if kind == "circle_member":  # the openid a member authorised the business circle with
            pipe.set(key, value)
            bound += 1
            continue
        if kind == "operator":  # an operator account (streams/operators.py), not a member's
            pipe.set(key, value)
            pipe.sadd(b.operators_index_key, r["key"].split(":", 1)[1])
            bound += 1
            continue
        if not member_id:
            pipe.delete(key)
            continue
        if kind == "plate":
            pipe.hset(key, mapping={"member_id": member_id, "auto_pay": value or "0"})
        elif kind in ("identity", "referral_phone", "alias"):
            pipe.set(key, member_id)
        else:
            log.warning("bindings: unknown kind %r of %s; left alone", kind, r["key"])
            continue
        bound += 1
    await pipe.execute()
    return bound


def _record_entries(member_id: str, records: list[Any], by_event: dict[str, list[dict[str, Any]]],
                    now_ms: int) -> dict[str, str]:
    """A member's event records as the live paths write them, from rebuild_member's."""
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
    return entries


async def merged_records(members: list[str], now_ms: int) -> dict[str, str]:
    """The event records of accounts merged into another, from their ledger rows (what
    `merge_in` copied to the account kept)."""
    rt = await runtime.started()
    rows = await rt.ledger.query("ledger_rows_of_members", {"members": members})
    out: dict[str, str] = {}
    for member_id, member_rows in groupby(rows, key=lambda r: r["member_id"]):
        items = list(member_rows)
        for r in items:
            r["explain"] = orjson.loads(r["explain"] or "[]")
            r["lots"] = orjson.loads(r["lots"] or "[]")
        _state, _balance, records, _review, _check = core_ext.rebuild_member(
            rt.rules, orjson.dumps(items).decode(), now_ms, None)
        by_event: dict[str, list[dict[str, Any]]] = {}
        for r in items:
            by_event.setdefault(r["event_id"], []).append(r)
        out.update(_record_entries(member_id, records, by_event, now_ms))
    for r in await rt.ledger.query("op_records_of_members", {"members": members}):
        out[r["event_id"]] = r["last_record"]
    return out


async def merged_event_ids(member_id: str) -> set[str]:
    """Event ids of the accounts merged into this one (their records came with the merge)."""
    rt = await runtime.started()
    _seq, state, _balance = await rt.balances.member_state(member_id)
    froms = [m["from"] for m in (orjson.loads(state or "{}").get("merges_in") or {}).values()
             if m.get("undone") is None]
    if not froms:
        return set()
    ids = {r["event_id"] for r in await rt.ledger.query("ledger_events_of_members", {"members": froms})}
    return ids | {r["event_id"] for r in await rt.ledger.query("op_records_of_members", {"members": froms})}


async def rebuild_members(members: list[str]) -> None:
    """Rebuilds these members' Redis state: the state their last write left (the
    member_states table; coupons, profile, engagement... that no ledger row carries) or,
    for a member without one, the state their ledger rows give; balances, counters, event
    records and history from the ledger rows."""
    rt = await runtime.started()
    rows = await rt.ledger.query("ledger_rows_of_members", {"members": members})
    stored = {r["member_id"]: (r["last_state"], int(r["last_seq"]))
              for r in await rt.ledger.query("member_states_of_members", {"members": members})}
    ops: dict[str, dict[str, str]] = {}
    for r in await rt.ledger.query("op_records_of_members", {"members": members}):
        ops.setdefault(r["member_id"], {})[r["event_id"]] = r["last_record"]
    # A member with a stored state and no ledger row yet (a hold, a profile, a plan...).
    in_ledger = {r["member_id"] for r in rows}
    rows += [{"member_id": m} for m in members if m in stored and m not in in_ledger]
    rows.sort(key=lambda r: r["member_id"])
    now_ms = int(time.time() * 1000)
    b = rt.balances
    read = b.redis.pipeline(transaction=False)
    for m in members:
        read.hget(b.member_key(m), "seq")
    current = {m: int(v or 0) for m, v in zip(members, await read.execute(), strict=True)}
    pipe = b.redis.pipeline(transaction=False)
    event_ends = {e["event"]: int(e["ends_at_ms"]) for e in core_ext.events_catalogue(rt.rules, None, {}, 0)}
    reviews: dict[str, int] = {}
    checks: dict[str, int] = {}
    boards: list[tuple[str, str, int, int]] = []
    for member_id, member_rows in groupby(rows, key=lambda r: r["member_id"]):
        items = [r for r in member_rows if "event_id" in r]
        for r in items:
            r["explain"] = orjson.loads(r["explain"] or "[]")
            r["lots"] = orjson.loads(r["lots"] or "[]")
        snapshot, seq = stored.get(member_id, (None, 0))
        state, balance, records, review_at, next_check = core_ext.rebuild_member(
            rt.rules, orjson.dumps(items).decode(), now_ms, snapshot)
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
            "events": len({r[0] for r in records} | set(ops.get(member_id, {}))),
            "sv_balance": int(orjson.loads(state).get("sv_fen", 0)),
        })
        if snapshot is not None:
            # Past the stored state's: the next write's state row supersedes it.
            pipe.hset(key, "seq", max(seq, current.get(member_id, 0)) + 1)
        else:
            pipe.hincrby(key, "seq", 1)  # a computation in flight against the lost state must retry
        entries = _record_entries(member_id, records, by_event, now_ms)
        # The HTTP operations' own records (their answers, refunds counted) as they were.
        entries.update(ops.get(member_id, {}))
        # Accounts merged into this one brought their records (their payments' refunds
        # are applied here): rebuilt from their own ledger rows.
        merged_from = [m["from"] for m in (orjson.loads(state).get("merges_in") or {}).values()
                       if m.get("undone") is None]
        if merged_from:
            entries = {**await merged_records(merged_from, now_ms), **entries}
        if entries:
            pipe.hset(b.records_key(member_id), mapping=cast("Mapping[EncodableT, EncodableT]", entries))
            pipe.expire(b.records_key(member_id), b.horizon_days * 86_400 + 86_400)
        recent = list(dict.fromkeys(r["event_id"] for r in items))[-b.history_len:]
        history = [h for h in (first_row(orjson.dumps(by_event[e]).decode()) for e in recent) if h]
        pipe.delete(b.history_key(member_id))
        if history:
            pipe.lpush(b.history_key(member_id), *history)
            # Bounded like the live writes' (keys.py: history expires with the horizon).
            pipe.expire(b.history_key(member_id), b.horizon_days * 86_400 + 86_400)
        if snapshot is not None:
            # The member's leaderboard scores as its last write left them, at that write's
            # version (later writes carry more: boards.rs version()).
            scores = orjson.loads(snapshot).get("boards") or {}
            boards += [(board, member_id, int(score), (seq << 20) | 0xFFFFF) for board, score in scores.items()]
        if review_at is not None:
            reviews[member_id] = review_at
        if next_check is not None:
            checks[member_id] = next_check
        # Points-mall orders still open, indexed by their deadline (the expiry timer's), and
        # the members' events' seats and waitlists (in the order the members joined).
        parsed = orjson.loads(state)
        for order_id, o in (parsed.get("orders") or {}).items():
            if o.get("status") in OPEN_ORDERS and o.get("collect_by_ms"):
                pipe.zadd(b.mall_orders_key, {f"{member_id}\t{order_id}": int(o["collect_by_ms"])})
        for event, su in (parsed.get("signups") or {}).items():
            seats = {"registered": b.event_in_key(event), "waitlisted": b.event_wait_key(event)}.get(su.get("status"))
            if seats is not None and event in event_ends:
                pipe.zadd(seats, {member_id: int(su.get("signed_at_ms") or 0)})
                pipe.pexpireat(seats, event_ends[event] + EVENT_KEEP_MS)
    await pipe.execute()
    if boards:
        await b.apply_board_plan(core_ext.board_commands(b.ns, boards, BOARD_SHARDS, BOARD_TTL_S))
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
    behind: list[str] = []
    ahead: list[str] = []
    for start in range(0, len(mismatched), 500):
        page = mismatched[start:start + 500]
        in_ledger: dict[str, set[str]] = {m: set() for m in page}
        for r in await rt.ledger.query("ledger_events_of_members", {"members": page}):
            in_ledger[r["member_id"]].add(r["event_id"])
        for r in await rt.ledger.query("op_records_of_members", {"members": page}):
            in_ledger[r["member_id"]].add(r["event_id"])  # an HTTP operation's record (stored value...)
        for m in page:
            in_redis = set(await rt.balances.redis.hkeys(rt.balances.records_key(m)))
            extra = in_redis - in_ledger[m]
            if extra:
                extra -= await merged_event_ids(m)  # records that came with a merge
            (ahead if extra else behind).append(m)
    # Members whose last stored state is newer than Redis's (its sequence number is behind):
    # Redis lost writes that changed no balance (a hold, a coupon, a plan...).
    stale = [m for m in await members_behind_their_stored_state() if m not in behind and m not in ahead]
    behind += stale
    for start in range(0, len(behind), 500):
        await rebuild_members(behind[start:start + 500])
    budgets = await restore_budgets()
    after = await reconcile()
    # The Redis now running is checked: a channel waiting on its restart applies again.
    await rt.balances.mark_repaired()
    log.warning("repair: %d members behind the ledger or their stored state rebuilt (%d by their state alone), "
                "%d ahead of the ledger left for a later run; mismatches %d -> %d", len(behind), len(stale),
                len(ahead), before["mismatch_count"], after["mismatch_count"])
    return {"mismatches_before": before["mismatch_count"], "rebuilt": len(behind), "rebuilt_members": behind[:100],
            "behind_their_stored_state": len(stale),
            "budgets_changed": budgets,
            "ahead_of_the_ledger": ahead[:100], "after": after}


async def members_behind_their_stored_state() -> list[str]:
    """Members whose Redis sequence number is below the newest one their writes stored in
    member_states: Redis lost (some of) their last writes. Each write stores the seq it
    gave, and a rebuild sets Redis past it, so a member in step is never below."""
    rt = await runtime.started()
    b = rt.balances
    stored = [(r["member_id"], int(r["last_seq"])) for r in await rt.ledger.query("member_last_seqs")]
    behind: list[str] = []
    for start in range(0, len(stored), 2000):
        page = stored[start:start + 2000]
        pipe = b.redis.pipeline(transaction=False)
        for m, _ in page:
            pipe.hget(b.member_key(m), "seq")
        for (m, seq), live in zip(page, await pipe.execute(), strict=True):
            if int(live or 0) < seq:
                behind.append(m)
    return behind


async def budget_targets() -> list[tuple[str, int, int, set[str]]]:
    """Per budget (campaign or stock): (id, `spent` in Redis, what the ledger shows given
    plus the open reservations of events it does not have, the reserved events it has)."""
    rt = await runtime.started()
    b = rt.balances
    given = {r["budget_id"]: int(r["units"]) for r in await rt.ledger.query("budgets_spent")}
    out = []
    for budget_id, _limit in rt.rules.budgets:
        fields = cast(dict[str, str], await b.redis.hgetall(b.budget_key(budget_id)))
        reserved = {f[2:]: int(v.split("|", 1)[0]) for f, v in fields.items() if f.startswith("r:")}
        done: set[str] = set()
        ids = list(reserved)
        for start in range(0, len(ids), 1000):
            done |= {r["event_id"] for r in await rt.ledger.query("ledger_events_present",
                                                                   {"ids": ids[start:start + 1000]})}
        target = given.get(budget_id, 0) + sum(u for e, u in reserved.items() if e not in done)
        out.append((budget_id, int(fields.get("spent", 0)), target, done))
    return out


async def restore_budgets() -> dict[str, int]:
    """Sets each budget's `spent` in Redis to what the ledger shows it gave, plus the units
    of reservations whose events the ledger does not have (still in flight, or never
    applied), and drops the reservations whose events it has (their settle was lost with
    Redis's last writes). Exact when no worker is applying (how `loyalty reconcile --repair`
    is run); returns the change per budget (+ raised, - lowered)."""
    rt = await runtime.started()
    b = rt.balances
    changed: dict[str, int] = {}
    for budget_id, current, target, done in await budget_targets():
        key = b.budget_key(budget_id)
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
