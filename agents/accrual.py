"""Accrual: payments, refunds and member events become points, a batch of records at a time.
(Over 400 lines: the batch loop, its retries and isolation of a failing record, and the
follow-ups of an applied batch — held refunds, registrations, referrals — are one agent.)

A batch is the records Faust hands over (envelopes of many events, or single events);
the Rust core decodes them all at once and plans the Redis work (core_ext.AccrualBatch,
docs/hot-path.md). Per round: one read per member and budget, one evaluation of every
pending event, one reservation per budget, one atomic write per member (checked against
the member's sequence number), one settlement per budget; members that conflicted or met
a short budget are evaluated again. Then the ledger rows go to the ledger topic (acks
awaited together), the outbox entries they came from are trimmed, coupon pushes and
notices are sent, and only then does the loop take the next batch, which is when Faust
acknowledges it. Python does no work per event on this path.

faust-streaming acknowledges a batch even if the body raises, so nothing here may
raise: transient failures are retried with backoff (every step is idempotent), and
an event that fails on its own goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

import core_ext
from streams import faults
from streams.app import (
    TRANSIENT,
    app,
    ledger_topic,
    member_events_topic,
    notifications_topic,
    payments_topic,
    record_binding,
    record_facts,
    runtime,
    send_dead_letter,
    settings,
)
from streams.errors import TransientError
from streams.guests import credit_guest_payments
from streams.ingress import PartitionCounts, pack_by_partition
from streams.messages import ledger_messages
from streams.metrics import counters, histograms, topic_messages
from streams.retry import retrying

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 5.0
#: A round's outbox outlives a dead worker as long as Kafka keeps the records that would
#: find it again (the local broker's retention: 7 days).
OUTBOX_TTL_S = 7 * 86_400
MAX_CONFLICT_ROUNDS = 20
DAY_MS = 86_400_000
_partitions = PartitionCounts(app)


#: The core's heavy calls run here (they release the GIL): meanwhile the event loop goes
#: on with Kafka I/O, the ledger sink and the HTTP service.
_CORE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="core")


#: Below this many bytes of records a batch's core calls run inline: handing a small
#: batch to the core thread costs more (GIL hand-offs under load, up to the interpreter's
#: switch interval each) than the work itself.
INLINE_BYTES = 128 * 1024


async def _off(fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
    if inline:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(_CORE, lambda: fn(*args))


async def _die_half_written(store: Any, outbox: Sequence[bytes], write: Sequence[bytes]) -> None:
    """Fault injection: writes the outbox and half of the batch's ly_apply calls (each
    atomic in Redis), then dies like a SIGKILL, leaving an envelope half applied."""
    await store.run(outbox, "outbox")
    await store.run(write[: len(write) // 2], "write (half, fault injected)")
    faults.die_like_sigkill(f"accrual-die-mid-write: {len(write) // 2} of {len(write)} member writes done")


class ConflictsPersist(TransientError):
    """Members kept conflicting; treated as transient (the batch is retried)."""


async def _await_all(futures: Sequence[Awaitable[object]]) -> None:
    if futures:
        await asyncio.gather(*futures)


class Phases:
    """Where a batch's time goes: each phase's wall microseconds into a counter
    (`accrual_phase_<name>_us_total`, on /metrics), for the benchmarks and the on-call."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def mark(self, name: str) -> float:
        now = time.perf_counter()
        spent = now - self.t
        counters[f"accrual_phase_{name}_us_total"] += int(spent * 1e6)
        self.t = now
        return spent


PHASES = ("decode", "read", "evaluate", "reserve", "outbox", "write", "settle", "guests", "send", "trim", "after")


async def process_event_batch(records: Sequence[bytes]) -> core_ext.BatchReport:
    """Applies one batch of records (envelopes or single events). Idempotent: safe to repeat."""
    rt = await runtime.started()
    rules = rt.rules  # one rule set for the whole batch, even if reloaded meanwhile
    store = rt.balances
    settings = rt.settings
    ph = Phases()
    small = sum(len(r) for r in records) < INLINE_BYTES
    batch = await _off(core_ext.AccrualBatch, rules, list(records), store.ns, int(time.time() * 1000),
                       settings.refund_horizon_days, settings.history_length, store.members_per_call, inline=small)
    core_s = ph.mark("decode")
    redis_s = 0.0
    for _round in range(MAX_CONFLICT_ROUNDS):
        read = batch.read_plan()
        if not read:
            break
        replies = await store.run(read, "read")
        redis_s += ph.mark("read")
        await _off(batch.read_done, replies, inline=small)
        core_s += ph.mark("evaluate")
        batch.reserve_done(await store.run(batch.reserve_plan(), "reserve", replicate=True))
        redis_s += ph.mark("reserve")
        # The round's outbox and the members' writes in one round trip: the commands run in
        # order, so the outbox is there before any record that names it.
        # Inline whatever the batch's size: ~3 µs an event of work, less than the two hand-offs
        # to the core thread and back cost on a busy machine.
        outbox = batch.outbox_plan(secrets.token_hex(4), OUTBOX_TTL_S)
        write = batch.write_plan()
        redis_s += ph.mark("outbox")
        if len(write) > 1 and faults.take(runtime.settings.faults_dir, "accrual-die-mid-write"):
            await _die_half_written(store, outbox, write)
        if store.cluster:
            # On a cluster the outbox and the members are on different primaries: the
            # outbox is written first, in a round trip of its own.
            await store.run(outbox, "outbox", replicate=True)
            replies = [*outbox, *await store.run(write, "write", replicate=True)]
        else:
            replies = await store.run([*outbox, *write], "write", replicate=True)
        conflicts = batch.write_done(replies[len(outbox):])
        redis_s += ph.mark("write")
        await store.run(batch.settle_plan(), "settle", replicate=True)
        redis_s += ph.mark("settle")
        if conflicts:
            log.info("%d members changed since the read or met a short budget; %d events evaluated again",
                     conflicts, batch.pending())
    else:
        raise ConflictsPersist(f"{batch.pending()} events still conflict after {MAX_CONFLICT_ROUNDS} rounds")
    resend = batch.resend_plan()
    if resend:
        batch.resend_done(await store.run(resend, "outbox read"))
    guests = batch.guest_plan(max(1, rules.guest_credit_days) * 86_400)
    batch.guest_done(await store.run(guests, "guests", replicate=True))
    redis_s += ph.mark("guests")
    histograms["core_ms"].observe(core_s * 1000)

    # What follows the writes runs while the next batch is applied (BACKGROUND): the ledger
    # rows (those of duplicates whose outbox an earlier delivery left included), coupon
    # pushes (Redis has the coupons now) and notices go to Kafka, then the round's outbox is
    # deleted and the members' recent movements and schedules are written. If the process
    # dies first, the outbox is still there: the batch's redelivery or the sweeper sends it.
    messages = batch.ledger_messages()  # joins rows already built: inline, like the plans
    pushes = [(p.key, p.value) for p in batch.pushes()]
    notices = [(n.key, n.value) for n in batch.notices()]
    trim = [*batch.trim_plan(), *batch.schedule_plan(store.tier_reviews_key, store.wallet_checks_key)]
    redis_s += ph.mark("send")
    await _in_background(_finish(store, messages, pushes, notices, trim))
    histograms["redis_apply_ms"].observe(redis_s * 1000)

    facts: list[dict[str, object]] = []
    for held in batch.held():
        wait_s = runtime.settings.held_wait_s
        deadline = int(time.time() * 1000) + wait_s * 1000
        await store.hold_refund(held.member_id, held.payment_id, held.body, deadline)
        facts.append(held_fact(held.member_id, held.payment_id, held.body, "held", deadline))
        log.info("refund of unknown payment %s of %s held until the payment arrives (at most %s)",
                 held.payment_id, held.member_id, _duration(wait_s))
    await record_facts(facts)  # durable before the batch's offsets are committed
    await release_held_refunds(batch.paid_with_held())
    for body in batch.registrations():
        await bind_and_credit(body, rules.guest_credit_days)
    for body in batch.invitations():
        await reward_referral(body)
    redirected = []
    for d in batch.dead_letters():
        if d.field == "merged_into":  # the member was merged: the event is the account kept's
            if (sent := await redirect_merged(d.body, d.reason)) is not None:
                redirected.append(sent)
            continue
        await send_dead_letter(source="accrual", reason=f"{d.field}: {d.reason}", field=d.field, body=d.body,
                               event_id=d.event_id)
    await _await_all(redirected)
    report = batch.report()
    batch.release()  # ~0.5 ms a thousand events, the GIL released: less than a hand-off
    ph.mark("after")
    return report


#: Batches whose sends (ledger rows, pushes, trims) may still be in flight while the next
#: batch is applied; beyond this, the next batch waits for the oldest.
MAX_BACKGROUND = 2
_background: list[asyncio.Task[None]] = []


def sends_in_flight() -> int:
    """Batches whose ledger rows may not be in Kafka yet (the repair after a Redis restart
    waits for none)."""
    return sum(1 for t in _background if not t.done())


async def _in_background(work: Awaitable[None]) -> None:
    while len(_background) >= MAX_BACKGROUND:
        await _background.pop(0)
    _background[:] = [t for t in _background if not t.done()]
    _background.append(asyncio.ensure_future(work))


async def _finish(store: Any, messages: list[bytes], pushes: list[tuple[bytes, bytes]],
                  notices: list[tuple[bytes, bytes]], trim: list[bytes]) -> None:
    """Sends a batch's ledger rows, pushes and notices and waits for Kafka's acks, then
    trims; retried until done (every step is idempotent)."""
    try:
        async for attempt in retrying("sending a batch's ledger rows", TRANSIENT, initial_s=0.1,
                                      max_s=MAX_BACKOFF_S, counter="batch_retries_total"):
            with attempt:
                futures = [await ledger_topic.send(value=m, force=True) for m in messages]
                if pushes or notices:
                    # Pushes and notices in envelopes per partition (the notifier unpacks them):
                    # one Kafka record, not one each, for the notifier to consume.
                    settings = runtime.settings
                    packed = pack_by_partition([*pushes, *notices],
                                               await _partitions(notifications_topic.get_topic_name()),
                                               settings.envelope_max_events, settings.envelope_max_bytes)
                    futures += [await notifications_topic.send(key=k, value=v, partition=p, force=True)
                                for p, k, v in packed]
                await _await_all(futures)
                topic_messages[(ledger_topic.get_topic_name(), "out")] += len(messages)
                counters["coupon_pushes_queued_total"] += len(pushes)
                # On the side channel: safe on a Redis restarted before its repair, which
                # waits for these sends to finish.
                await store.run(trim, "outbox trim, history and schedules", side=True)
    except Exception:
        # Never lost: the outbox stays until the sweeper sends it.
        log.exception("sending a batch's ledger rows failed; the outbox sweeper will send them")


#: An outbox older than this had its batch die before the ledger topic took its rows.
SWEEP_AFTER_MS = 60_000


@app.timer(interval=15.0)
async def sweep_outboxes() -> None:
    """Round outboxes left by a process that died after its writes and before the ledger
    topic took their rows: the rows of the events whose records name the outbox (those the
    round applied) are sent, then the outbox is deleted. Re-sending rows the ledger has
    already changes nothing (they collapse); nothing here is on the hot path."""
    try:
        rt = await runtime.started()
        store = rt.balances
        sent = 0
        for token in await store.stale_outboxes(int(time.time() * 1000) - SWEEP_AFTER_MS):
            rows = await store.outbox_rows(token)
            if rows:
                for payload in ledger_messages(rows, []):
                    fut = await ledger_topic.send(value=payload, force=True)
                    await fut
                sent += len(rows)
            await store.forget_outbox(token)
        if sent:
            counters["outbox_rows_swept_total"] += sent
            log.warning("outbox sweeper: %d events' ledger rows sent from outboxes a dead batch left", sent)
    except TRANSIENT as exc:
        log.warning("outbox sweeper skipped this round: %r", exc)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


#: What the held-refund gauges show (refreshed by `expire_held_refunds`).
held_now: dict[str, float] = {"payments": 0.0, "oldest_age_s": 0.0}


@app.timer(interval=float(min(30, max(1, settings.held_wait_s // 4))))
async def expire_held_refunds() -> None:
    """Refunds held past `LOYALTY_HELD_WAIT_S` (their payment never came) go to the
    dead-letter topic with the reason; the gauges show how many payments still have refunds
    held and how long the oldest has waited."""
    try:
        await expire_held_now(int(time.time() * 1000))
    except TRANSIENT as exc:
        log.warning("held-refund expiry skipped this round: %r", exc)


def held_fact(member_id: str, payment_id: str, body: bytes | str, status: str,
              deadline_ms: int = 0) -> dict[str, object]:
    """A `held_refunds` row: a refund held (with its body and deadline), released or expired."""
    text = body.decode() if isinstance(body, bytes) else body
    return {"table": "held_refunds", "member_id": member_id, "payment_id": payment_id,
            "event_id": _event_id_of(text) or "", "status": status, "body": text if status == "held" else "",
            "deadline_ms": deadline_ms}


async def expire_held_now(now_ms: int) -> int:
    """One round of the expiry; returns how many refunds were dead-lettered."""
    rt = await runtime.started()
    store, wait_s = rt.balances, rt.settings.held_wait_s
    expired = 0
    for member_id, payment_id, bodies in await store.held_due(now_ms):
        for body in bodies:
            event_id = _event_id_of(body)
            reason = (f"refund_of: no payment {payment_id!r} of member {member_id!r} was applied within "
                      f"{_duration(wait_s)} of the refund (held refunds wait LOYALTY_HELD_WAIT_S)")
            await send_dead_letter(source="accrual", reason=reason, field="refund_of", body=body.encode(),
                                   event_id=event_id)
        await store.release_held(member_id, payment_id, len(bodies))
        await record_facts([held_fact(member_id, payment_id, body, "expired") for body in bodies])
        counters["refunds_expired_total"] += len(bodies)
        expired += len(bodies)
    total, _ = await store.held_list(limit=1)
    oldest = await store.oldest_held_deadline_ms()
    held_now["payments"] = float(total)
    held_now["oldest_age_s"] = 0.0 if oldest is None else max(0.0, (now_ms - (oldest - wait_s * 1000)) / 1000)
    return expired


def _event_id_of(body: str) -> str | None:
    try:
        value = orjson.loads(body).get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _register_held_gauges() -> None:
    from streams import metrics

    metrics.gauges["refunds_held_payments"] = (
        "Payments with refunds held for them (refunds that arrived first), as of the last expiry round.",
        lambda: {"": held_now["payments"]})
    metrics.gauges["refunds_held_oldest_age_seconds"] = (
        "How long the oldest held refund has waited for its payment, as of the last expiry round.",
        lambda: {"": held_now["oldest_age_s"]})
    metrics.gauges["accrual_sends_in_flight"] = (
        "Applied batches whose ledger rows and pushes may not be in Kafka yet (their offsets may be committed).",
        lambda: {"": float(sends_in_flight())})


_register_held_gauges()


async def release_held_refunds(paid: Sequence[tuple[str, str]]) -> None:
    """Refunds held for payments that are now applied are sent again, after them."""
    if not paid:
        return
    rt = await runtime.started()
    for member_id, payment_id, held in await rt.balances.held_refunds(paid):
        await _await_all([await payments_topic.send(key=member_id.encode(), value=body.encode(), force=True)
                          for body in held])
        await rt.balances.release_held(member_id, payment_id, len(held))
        await record_facts([held_fact(member_id, payment_id, body, "released") for body in held])
        counters["refunds_released_total"] += len(held)
        log.info("%d held refunds of payment %s of %s released", len(held), payment_id, member_id)


async def bind_and_credit(body: bytes, credit_days: int) -> None:
    """After a registration: bind its external ids and credit the guest payments those
    ids made within the credit window, by sending them again under the member's id."""
    rt = await runtime.started()
    reg = core_ext.decode_event(body)
    member_id = reg.member_id
    if member_id is None:
        raise RuntimeError("a registration without a member id reached bind_and_credit")
    for kind, external_id in reg.bindings:
        owner = await rt.balances.bind(kind, external_id, member_id)
        if owner != member_id:
            log.warning("%s id %s is bound to member %s already; not rebinding it to %s",
                        kind, external_id, owner, member_id)
            continue
        # Durable before the guest payments are credited (a redelivery records it again).
        await record_binding("identity", f"id:{kind}:{external_id}", member_id)
        since = reg.occurred_at_ms - credit_days * DAY_MS if credit_days > 0 else None
        await credit_guest_payments(kind, external_id, member_id, since)


async def redirect_merged(body: bytes, into: str) -> Awaitable[object] | None:
    """An event for an account merged into `into` (core_ext/src/merge.rs), sent again as
    `into`'s (same event id: applied once); None if `into` has its record already (applied
    on the merged account before the merge, whose records came along). Returns the send's
    future."""
    event = orjson.loads(body)
    was = event.get("member_id")
    rt = await runtime.started()
    if await rt.balances.event_record(into, str(event.get("event_id"))):
        counters["events_duplicate_after_merge_total"] += 1
        return None
    event["member_id"] = into
    topic = payments_topic if event.get("type") in ("payment", "refund") else member_events_topic
    counters["events_redirected_total"] += 1
    log.info("event %s of merged member %s sent to %s", event.get("event_id"), was, into)
    return await topic.send(key=into.encode(), value=orjson.dumps(event), force=True)  # type: ignore[no-any-return]


async def reward_referral(body: bytes) -> None:
    """A registration that names its inviter: the inviter's `referral` event (their caps
    apply in the core), once per new phone number: a phone that already earned a reward
    for another registration earns none, nor does a registration without a phone."""
    reg = core_ext.decode_event(body)
    inviter, member_id = reg.referred_by, reg.member_id
    if inviter is None or member_id is None:
        return
    if inviter == member_id:
        log.warning("member %s names itself as inviter; no referral reward", member_id)
        return
    phones = [ext for kind, ext in reg.bindings if kind == "phone"]
    rt = await runtime.started()
    claimed = bool(phones) and await rt.balances.claim_referral_phone(phones[0], member_id)
    if claimed:
        await record_binding("referral_phone", f"ref-phone:{phones[0]}", member_id)
    if not claimed:
        counters["referrals_refused_total"] += 1
        log.info("registration of %s invited by %s: %s; no referral reward", member_id, inviter,
                 "no phone number" if not phones else "the phone number was rewarded before")
        return
    at = dt.datetime.fromtimestamp(reg.occurred_at_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    event = {"event_id": f"referral:{member_id}", "type": "referral", "occurred_at": at, "member_id": inviter,
             "referred_member_id": member_id}
    fut = await member_events_topic.send(key=inviter.encode(), value=orjson.dumps(event), force=True)
    await fut
    counters["referrals_sent_total"] += 1


async def process_with_retries(records: Sequence[bytes]) -> core_ext.BatchReport | None:
    """Never raises: retries transient failures; isolates records on anything else."""
    try:
        async for attempt in retrying(f"batch of {len(records)} records", TRANSIENT,
                                      initial_s=0.1, max_s=MAX_BACKOFF_S, counter="batch_retries_total"):
            with attempt:
                return await process_event_batch(records)
    except Exception:
        log.exception("batch of %d records failed unexpectedly; processing them one by one", len(records))
        await _process_one_by_one(records)
    return None


async def _process_one_by_one(records: Sequence[bytes]) -> None:
    """Each record alone, then each event of an envelope alone: what still fails on its own
    is dead-lettered with the reason; the rest is applied."""
    for record in records:
        if await _alone(record):
            continue
        try:
            bodies = core_ext.envelope_unpack(record)
        except core_ext.InvalidEventError:
            bodies = [record]
        if len(bodies) > 1:
            for body in bodies:
                if not await _alone(body):
                    await _dead_letter_forever(body, "internal error: the event failed on its own")
        else:
            await _dead_letter_forever(record, "internal error: the event failed on its own")


async def _alone(record: bytes) -> bool:
    """Applies one record, retrying transient failures; False if it fails otherwise."""
    try:
        async for attempt in retrying("a record on its own", TRANSIENT, initial_s=0.5,
                                      max_s=MAX_BACKOFF_S):
            with attempt:
                account(await process_event_batch([record]))
    except Exception:
        log.exception("a record of %d bytes failed on its own", len(record))
        return False
    return True


async def _dead_letter_forever(body: bytes, reason: str) -> None:
    async for attempt in retrying("a dead-letter send", TRANSIENT, initial_s=0.5, max_s=MAX_BACKOFF_S):
        with attempt:
            await send_dead_letter(source="accrual", reason=reason, body=body)
    counters["events_rejected_total"] += 1


def account(report: core_ext.BatchReport) -> None:
    counters["batches_total"] += 1
    counters["events_applied_total"] += report.applied
    counters["events_duplicate_total"] += report.duplicates
    counters["events_rejected_total"] += report.rejected
    counters["events_guest_total"] += report.guests
    counters["points_issued_total"] += report.points_issued
    counters["points_debited_total"] += report.points_debited
    counters["member_conflicts_total"] += report.conflicts
    counters["refunds_held_total"] += report.held
    counters["ledger_rows_sent_total"] += report.ledger_rows
    counters["events_total"] += report.events
    counters["events_mismatched_total"] += report.mismatched


async def _consume(stream, topic: str) -> None:  # type: ignore[no-untyped-def]
    """Takes batches of records; in a large batch the records of each partition are applied
    concurrently with the other partitions' (a member's events are all in one partition and
    stay in order): while one partition waits on Redis or Kafka, another's evaluation runs
    in the core. A small batch is one group (fewer round trips). Faust acknowledges the
    batch when the next one is taken, after all of them."""
    settings = runtime.settings
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        t0 = time.perf_counter()
        topic_messages[(topic, "in")] += len(events)
        groups: dict[int, list[bytes]] = {}
        if sum(len(ev.value) for ev in events) < INLINE_BYTES:
            groups[0] = [ev.value for ev in events]  # a small batch: one group, fewest round trips
        else:
            for ev in events:
                groups.setdefault(ev.message.partition, []).append(ev.value)
        reports = await asyncio.gather(*(process_with_retries(records) for records in groups.values()))
        for report in reports:
            if report is None:
                continue
            account(report)
            histograms["batch_size"].observe(report.events)
            log.debug("batch: %d events, %d applied, %d duplicates, %d rejected, %d guests", report.events,
                      report.applied, report.duplicates, report.rejected, report.guests)
        histograms["batch_ms"].observe((time.perf_counter() - t0) * 1000)


@app.agent(payments_topic)
async def accrue_payments(stream):  # type: ignore[no-untyped-def]
    """Payments and refunds, in batches; each batch is applied before its offsets are acked."""
    await _consume(stream, payments_topic.get_topic_name())


@app.agent(member_events_topic)
async def apply_member_events(stream):  # type: ignore[no-untyped-def]
    """Registrations, profile changes, sign-ins, referrals, reviews, tier overrides and reviews."""
    await _consume(stream, member_events_topic.get_topic_name())
