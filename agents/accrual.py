"""Accrual: payments and refunds become points, a whole batch at a time.

Per batch: decode and validate in Rust, read every member's context from Redis in
one pipeline, compute all outcomes in one Rust call, apply the movements in one
pipeline of idempotent Lua calls, then send the ledger rows to the ledger topic as
one message and wait for Kafka's ack. Only then does the loop take the next batch,
which is when Faust acknowledges (and later commits) the offsets of this one.

faust-streaming acknowledges a batch even if the body raises, so nothing here may
raise: transient failures are retried with backoff (every step is idempotent), and
an event that fails on its own goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.exceptions
from aiokafka.errors import KafkaError

import core_ext
from streams.app import app, ledger_topic, payments_topic, runtime, send_dead_letter
from streams.metrics import counters
from streams.sinks.balances import Movement

log = logging.getLogger(__name__)

TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, KafkaError, OSError, asyncio.TimeoutError)
MAX_BACKOFF_S = 5.0


@dataclass
class BatchReport:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    points_issued: int = 0
    points_clawed_back: int = 0
    ledger_rows: int = 0
    rejections: list[tuple[str | None, str, str]] = field(default_factory=list)


async def process_payment_batch(bodies: Sequence[bytes]) -> BatchReport:
    """Applies one batch of raw payment/refund bodies. Idempotent: safe to repeat."""
    rt = await runtime.started()
    report = BatchReport()
    batch = core_ext.PaymentBatch.decode(list(bodies))
    keys = batch.keys()
    ctx = await rt.balances.read_context(keys)
    outcomes = core_ext.accrue_batch(rt.rules, batch, ctx.tiers, ctx.originals, ctx.applied, int(time.time() * 1000))

    movements: list[Movement] = []
    replayed: list[tuple[str, str]] = []
    dead: list[tuple[int, str, str]] = []
    for i, (status, points, row, refund_of, amount_fen, clawback, err_field, reason) in enumerate(outcomes):
        event_id, member_id, _ = keys[i]
        if status == "apply":
            assert event_id is not None and member_id is not None and row is not None
            movements.append(
                Movement(
                    member_id=member_id,
                    event_id=event_id,
                    kind="refund" if refund_of is not None else "payment",
                    points=points,
                    row=row,
                    amount_fen=amount_fen,
                    refund_of=refund_of,
                    refund_amount_fen=amount_fen if refund_of is not None else 0,
                    clawback_points=clawback,
                )
            )
        elif status == "duplicate":
            report.duplicates += 1
            if ctx.applied[i] and event_id is not None and member_id is not None:
                replayed.append((member_id, event_id))
        else:
            dead.append((i, err_field or "body", reason or "rejected"))

    ledger_rows: list[str] = []
    for (newly, row), m in zip(await rt.balances.apply(movements), movements, strict=True):
        ledger_rows.append(row)
        if newly:
            report.applied += 1
            if m.points >= 0:
                report.points_issued += m.points
            else:
                report.points_clawed_back -= m.points
        else:
            report.duplicates += 1
    # Rows of events applied by an earlier delivery are sent again: if that delivery
    # died before its ledger message was acked, this is what puts the row in ClickHouse.
    ledger_rows.extend(r for r in await rt.balances.stored_rows(replayed) if r is not None)

    if ledger_rows:
        payload = ("[" + ",".join(ledger_rows) + "]").encode()
        fut = await ledger_topic.send(value=payload, force=True)
        await fut
        report.ledger_rows = len(ledger_rows)

    for i, err_field, reason in dead:
        event_id = keys[i][0]
        await send_dead_letter(
            source="accrual",
            reason=f"{err_field}: {reason}",
            field=err_field,
            body=bodies[i],
            event_id=event_id,
        )
        report.rejected += 1
        report.rejections.append((event_id, err_field, reason))
    return report


async def process_with_retries(bodies: Sequence[bytes]) -> BatchReport:
    """Never raises: retries transient failures; isolates events on anything else."""
    backoff = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            return await process_payment_batch(bodies)
        except TRANSIENT as exc:
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
                r = await process_payment_batch([body])
                break
            except TRANSIENT as exc:
                log.warning("event retry after transient failure: %r", exc)
                await asyncio.sleep(1.0)
            except Exception as exc:
                log.exception("event failed on its own; dead-lettering it")
                await _dead_letter_forever(body, f"internal error: {exc!r}")
                r = BatchReport(rejected=1)
                break
        for name in ("applied", "duplicates", "rejected", "points_issued", "points_clawed_back", "ledger_rows"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
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
    counters["points_issued_total"] += report.points_issued
    counters["points_clawed_back_total"] += report.points_clawed_back


@app.agent(payments_topic)
async def accrue_payments(stream):  # type: ignore[no-untyped-def]
    """Consumes payments in batches; each batch is applied before its offsets are acked."""
    settings = runtime.settings
    async for bodies in stream.take(settings.batch_size, within=settings.batch_within_s):
        report = await process_with_retries(bodies)
        account(report)
        log.debug(
            "batch: %d events, %d applied, %d duplicates, %d rejected",
            len(bodies),
            report.applied,
            report.duplicates,
            report.rejected,
        )
