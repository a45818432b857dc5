"""Accrual: payments, refunds and member events become points, a batch at a time.

Per batch: decode and validate in Rust, read every member's state, the campaign
budgets and the refunded payments from Redis in one pipeline, evaluate the batch in
one Rust call, apply each member's movements in one atomic Lua call (checked
against the member's sequence number and the budgets), then send the ledger rows
and guest facts to the ledger topic as one message and wait for Kafka's ack. Only
then does the loop take the next batch, which is when Faust acknowledges it.

A member whose stored state moved on since the read (another worker, an operator)
or whose campaign budget ran out meanwhile is evaluated again with fresh state.

faust-streaming acknowledges a batch even if the body raises, so nothing here may
raise: transient failures are retried with backoff (every step is idempotent), and
an event that fails on its own goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

import core_ext
from streams.app import (
    TRANSIENT,
    app,
    ledger_topic,
    member_events_topic,
    notifications_topic,
    payments_topic,
    runtime,
    send_dead_letter,
)
from streams.metrics import counters, histograms, topic_messages
from streams.pushes import coupon_push
from streams.records import ledger_messages
from streams.sinks.balances import EventMove, MemberMoves

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
MAX_CONFLICT_ROUNDS = 20
DAY_MS = 86_400_000


class ConflictsPersist(Exception):
    """Members kept conflicting; treated as transient (the batch is retried)."""


@dataclass
class BatchReport:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    guests: int = 0
    points_issued: int = 0
    points_clawed_back: int = 0
    ledger_rows: int = 0
    conflicts: int = 0
    parked: int = 0
    rejections: list[tuple[str | None, str, str]] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        for name in ("applied", "duplicates", "rejected", "guests", "points_issued", "points_clawed_back",
                     "ledger_rows", "conflicts", "parked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


async def process_event_batch(bodies: Sequence[bytes]) -> BatchReport:
    """Applies one batch of raw event bodies. Idempotent: safe to repeat."""
    rt = await runtime.started()
    rules = rt.rules  # one rule set for the whole batch, even if reloaded meanwhile
    # Campaign points, trigger coupons and coupon stocks: one atomic budget check.
    budgets: dict[str, int | None] = dict(rules.budgets)
    budgeted = list(budgets)
    report = BatchReport()
    ledger_rows: list[str] = []
    guest_facts: list[str] = []
    replayed: list[tuple[str, str]] = []
    dead: list[tuple[int, str, str]] = []
    registered: list[int] = []
    invited: list[int] = []
    notices: list[tuple[str, str]] = []
    parked: list[tuple[str, str, bytes]] = []
    paid: list[tuple[str, str]] = []
    guests: list[tuple[str, str, str, bytes]] = []

    pending = list(range(len(bodies)))
    for _round in range(MAX_CONFLICT_ROUNDS):
        t0 = time.perf_counter()
        batch = core_ext.EventBatch.decode([bodies[i] for i in pending])
        keys = batch.keys()
        boards = batch.boards(rules)
        t1 = time.perf_counter()
        ctx = await rt.balances.read_context(keys, budgeted)
        t2 = time.perf_counter()
        outcomes, updates = core_ext.evaluate_batch(
            rules, batch, ctx.applied, ctx.originals, ctx.members, ctx.budget_spent, int(time.time() * 1000)
        )
        t3 = time.perf_counter()
        histograms["core_ms"].observe((t1 - t0 + t3 - t2) * 1000)
        groups = {m: MemberMoves(m, seq, state, review, check) for m, seq, state, review, check in updates}
        for (status, points, rows, refund_of, amount, clawback, campaigns, _f, _r, _n, extra), k, board in zip(
            outcomes, keys, boards, strict=True
        ):
            if status != "apply":
                continue
            event_id, member_id = k[0], k[1]
            assert event_id is not None and member_id is not None and rows is not None
            g = groups[member_id]
            # Leaderboards: points a payment earned (a refund's clawback takes them back),
            # added in the same atomic step as the balance.
            score = 0 if board is None else extra[0] if k[5] == "payment" else -clawback
            on = () if not score or board is None else (
                f"w:{board[1]}:all", f"w:{board[1]}:bu:{board[0]}", f"m:{board[2]}:all", f"m:{board[2]}:bu:{board[0]}")
            g.events.append(EventMove(event_id, k[5], points, rows, amount, refund_of, clawback,
                                      record_points=extra[0], used=extra[1], returned=extra[2],
                                      boards=on, board_points=score))
            for cid, pts in campaigns:
                g.campaigns[cid] = g.campaigns.get(cid, 0) + pts
        group_list = list(groups.values())
        t4 = time.perf_counter()
        results = await rt.balances.apply(group_list, budgets)
        histograms["redis_apply_ms"].observe((t2 - t1 + time.perf_counter() - t4) * 1000)
        conflicted = {g.member_id for g, r in zip(group_list, results, strict=True) if r != "ok"}
        report.conflicts += len(conflicted)

        next_pending: list[int] = []
        for j, (status, points, rows, _of, _amt, _claw, _c, err_field, reason, notice, _x) in enumerate(outcomes):
            i = pending[j]
            event_id, member_id = keys[j][0], keys[j][1]
            if member_id is not None and member_id in conflicted and status in ("apply", "rejected"):
                next_pending.append(i)
                continue
            if status == "apply":
                assert rows is not None
                ledger_rows.append(rows)
                report.applied += 1
                if points >= 0:
                    report.points_issued += points
                else:
                    report.points_clawed_back -= points
                if keys[j][5] == "register":
                    registered.append(i)
                    invited.append(i)
                elif keys[j][5] == "payment" and event_id is not None and member_id is not None:
                    paid.append((member_id, event_id))
                if notice is not None:
                    notices.append((member_id or "", notice))
            elif status == "duplicate":
                report.duplicates += 1
                if keys[j][5] == "register":
                    invited.append(i)  # a redelivery: its referral may not have been sent
                if ctx.applied[j] and event_id is not None and member_id is not None:
                    replayed.append((member_id, event_id))
            elif status == "guest":
                assert rows is not None and event_id is not None
                # Its fact is written again either way (the ledger dedups it): a crash
                # after keeping it and before the write must not lose the row.
                guest_facts.append(rows)
                payer = keys[j][3]
                if payer is not None:
                    guests.append((payer[0], payer[1], event_id, bodies[i]))
                else:
                    report.guests += 1
            elif (keys[j][5] == "refund" and err_field == "refund_of" and member_id is not None
                  and keys[j][2] is not None and (reason or "").startswith("no payment")):
                # A refund ahead of its payment: held until the payment is applied.
                parked.append((member_id, keys[j][2], bodies[i]))
            else:
                dead.append((i, err_field or "body", reason or "rejected"))
        if conflicted:
            log.info("%d members changed since the read; evaluating their %d events again",
                     len(conflicted), len(next_pending))
        pending = next_pending
        if not pending:
            break
    else:
        raise ConflictsPersist(f"{len(pending)} events still conflict after {MAX_CONFLICT_ROUNDS} rounds")

    for kept in await rt.balances.keep_guests(guests, max(1, rules.guest_credit_days)):
        if kept:
            report.guests += 1
        else:
            report.duplicates += 1  # kept already: a redelivery or a gateway's retry
    # Rows of events applied by an earlier delivery are sent again: if that delivery
    # died before its ledger message was acked, this is what puts them in ClickHouse.
    ledger_rows.extend(r for r in await rt.balances.stored_rows(replayed) if r is not None)
    if ledger_rows or guest_facts:
        futures = [await ledger_topic.send(value=payload, force=True)
                   for payload in ledger_messages(ledger_rows, guest_facts)]
        for fut in futures:
            await fut
        topic_messages[(ledger_topic.get_topic_name(), "out")] += len(futures)
        report.ledger_rows = sum(r.count('"event_id"') for r in ledger_rows)
        await send_coupon_pushes(ledger_rows)

    for member_id, payment_id, body in parked:
        await rt.balances.park(member_id, payment_id, body)
        report.parked += 1
        log.info("refund of unknown payment %s of %s held until the payment arrives", payment_id, member_id)
    await release_parked(paid)
    for member_id, notice in notices:
        fut = await notifications_topic.send(key=member_id.encode(), value=notice.encode(), force=True)
        await fut
        counters["notices_sent_total"] += 1
    for i in registered:
        await bind_and_credit(bodies[i], rules.guest_credit_days)
    for i in invited:
        await reward_referral(bodies[i])
    for i, err_field, reason in dead:
        event_id = core_ext.EventBatch.decode([bodies[i]]).keys()[0][0]
        await send_dead_letter(source="accrual", reason=f"{err_field}: {reason}", field=err_field, body=bodies[i],
                               event_id=event_id)
        report.rejected += 1
        report.rejections.append((event_id, err_field, reason))
    return report


async def send_coupon_pushes(ledger_rows: Sequence[str]) -> None:
    """Coupons the batch issued (and those of replayed events, whose send may have died
    with the worker) go to the coupon-pushes topic, keyed by member, once Redis has them.
    The push id is the coupon id: the notifier delivers each id once."""
    futures = []
    for rows in ledger_rows:
        if '"table":"coupon_events"' not in rows:
            continue
        for row in orjson.loads(rows):
            if row.get("table") == "coupon_events" and row["kind"] == "issued":
                futures.append(await notifications_topic.send(key=row["member_id"].encode(), value=coupon_push(row),
                                                              force=True))
    for fut in futures:
        await fut
    counters["coupon_pushes_queued_total"] += len(futures)


async def release_parked(paid: Sequence[tuple[str, str]]) -> None:
    """Refunds held for payments that are now applied are sent again, after them."""
    if not paid:
        return
    rt = await runtime.started()
    for member_id, payment_id, held in await rt.balances.parked(paid):
        for body in held:
            fut = await payments_topic.send(key=member_id.encode(), value=body.encode(), force=True)
            await fut
        await rt.balances.unpark(member_id, payment_id)
        counters["refunds_released_total"] += len(held)
        log.info("%d held refunds of payment %s of %s released", len(held), payment_id, member_id)


async def bind_and_credit(body: bytes, credit_days: int) -> None:
    """After a registration: bind its external ids and credit the guest payments those
    ids made within the credit window, by sending them again under the member's id."""
    rt = await runtime.started()
    batch = core_ext.EventBatch.decode([body])
    registered_at = batch.keys()[0][4]
    for _i, member_id, kind, external_id in batch.bindings():
        owner = await rt.balances.bind(kind, external_id, member_id)
        if owner != member_id:
            log.warning("%s id %s is bound to member %s already; not rebinding it to %s",
                        kind, external_id, owner, member_id)
            continue
        credited = 0
        for raw in await rt.balances.guest_payments(kind, external_id):
            event = orjson.loads(raw)
            occurred = core_ext.EventBatch.decode([raw.encode()]).keys()[0][4]
            if credit_days <= 0 or occurred < registered_at - credit_days * DAY_MS:
                continue
            event["member_id"] = member_id
            fut = await payments_topic.send(key=member_id.encode(), value=orjson.dumps(event), force=True)
            await fut
            credited += 1
        await rt.balances.forget_guest(kind, external_id)
        if credited:
            counters["guest_payments_credited_total"] += credited
            log.info("credited %d guest payments of %s %s to member %s", credited, kind, external_id, member_id)


async def reward_referral(body: bytes) -> None:
    """A registration that names its inviter: the inviter's `referral` event (their caps
    apply in the core), once per new phone number: a phone that already earned a reward
    for another registration earns none, nor does a registration without a phone."""
    batch = core_ext.EventBatch.decode([body])
    refs = batch.referrals()
    if not refs:
        return
    _i, member_id, inviter = refs[0]
    if inviter == member_id:
        log.warning("member %s names itself as inviter; no referral reward", member_id)
        return
    phones = [ext for _j, _m, kind, ext in batch.bindings() if kind == "phone"]
    rt = await runtime.started()
    if not phones or not await rt.balances.claim_referral_phone(phones[0], member_id):
        counters["referrals_refused_total"] += 1
        log.info("registration of %s invited by %s: %s; no referral reward", member_id, inviter,
                 "no phone number" if not phones else "the phone number was rewarded before")
        return
    at = dt.datetime.fromtimestamp(batch.keys()[0][4] / 1000, dt.UTC).isoformat(timespec="milliseconds")
    event = {"event_id": f"referral:{member_id}", "type": "referral", "occurred_at": at, "member_id": inviter,
             "referred_member_id": member_id}
    fut = await member_events_topic.send(key=inviter.encode(), value=orjson.dumps(event), force=True)
    await fut
    counters["referrals_sent_total"] += 1


async def process_with_retries(bodies: Sequence[bytes]) -> BatchReport:
    """Never raises: retries transient failures; isolates events on anything else."""
    backoff = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            return await process_event_batch(bodies)
        except (*TRANSIENT, ConflictsPersist) as exc:
            counters["batch_retries_total"] += 1
            log.warning("batch of %d failed (attempt %d, retrying in %.1fs): %r", len(bodies), attempt, backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        except Exception:
            log.exception("batch of %d failed unexpectedly; processing its events one by one", len(bodies))
            return await _process_one_by_one(bodies)


async def _process_one_by_one(bodies: Sequence[bytes]) -> BatchReport:
    total = BatchReport()
    for body in bodies:
        while True:
            try:
                r = await process_event_batch([body])
                break
            except (*TRANSIENT, ConflictsPersist) as exc:
                log.warning("event retry after transient failure: %r", exc)
                await asyncio.sleep(1.0)
            except Exception as exc:
                log.exception("event failed on its own; dead-lettering it")
                await _dead_letter_forever(body, f"internal error: {exc!r}")
                r = BatchReport(rejected=1)
                break
        total.add(r)
    return total


async def _dead_letter_forever(body: bytes, reason: str) -> None:
    while True:
        try:
            await send_dead_letter(source="accrual", reason=reason, body=body)
            return
        except TRANSIENT as exc:
            log.warning("dead-letter send failed, retrying: %r", exc)
            await asyncio.sleep(1.0)


def account(report: BatchReport) -> None:
    counters["batches_total"] += 1
    counters["events_applied_total"] += report.applied
    counters["events_duplicate_total"] += report.duplicates
    counters["events_rejected_total"] += report.rejected
    counters["events_guest_total"] += report.guests
    counters["points_issued_total"] += report.points_issued
    counters["points_clawed_back_total"] += report.points_clawed_back
    counters["member_conflicts_total"] += report.conflicts
    counters["refunds_held_total"] += report.parked


async def _consume(stream, topic: str) -> None:  # type: ignore[no-untyped-def]
    settings = runtime.settings
    async for bodies in stream.take(settings.batch_size, within=settings.batch_within_s):
        t0 = time.perf_counter()
        topic_messages[(topic, "in")] += len(bodies)
        histograms["batch_size"].observe(len(bodies))
        report = await process_with_retries(bodies)
        account(report)
        histograms["batch_ms"].observe((time.perf_counter() - t0) * 1000)
        log.debug("batch: %d events, %d applied, %d duplicates, %d rejected, %d guests",
                  len(bodies), report.applied, report.duplicates, report.rejected, report.guests)


@app.agent(payments_topic)
async def accrue_payments(stream):  # type: ignore[no-untyped-def]
    """Payments and refunds, in batches; each batch is applied before its offsets are acked."""
    await _consume(stream, payments_topic.get_topic_name())


@app.agent(member_events_topic)
async def apply_member_events(stream):  # type: ignore[no-untyped-def]
    """Registrations, profile changes, sign-ins, referrals, reviews, tier overrides and reviews."""
    await _consume(stream, member_events_topic.get_topic_name())
