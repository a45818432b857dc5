"""Ledger sink: rows from the ledger topic go to ClickHouse in large inserts.

This is the one process that owns the ClickHouse store (chdb allows one per data
directory). A failed insert is retried with backoff while the stream waits, which
holds back the offsets (nothing acked before it is written) and so applies
backpressure instead of dropping rows. Re-emitted rows collapse in the
ReplacingMergeTree, so at-least-once delivery here gives exactly-once counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from streams.app import app, ledger_topic, runtime, send_dead_letter
from streams.metrics import counters, histograms, topic_messages
from streams.sinks.ledger import BadLedgerRows, LedgerMessage, LedgerUnavailable

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 10.0


async def write_ledger_messages(messages: Sequence[bytes]) -> int:
    """Decodes every message (a poison one goes to the dead-letter topic) and writes
    all rows in one insert, retrying until it is taken. Returns the rows written."""
    decoded: list[tuple[bytes, LedgerMessage]] = []
    for value in messages:
        try:
            decoded.append((value, LedgerMessage(value)))
        except Exception as exc:
            await send_dead_letter(source="ledger", reason=f"undecodable ledger message: {exc}", body=value)
    topic_messages[(ledger_topic.get_topic_name(), "in")] += len(messages)
    try:
        return await _write(decoded)
    except BadLedgerRows:
        # One message of the batch has rows that cannot be stored: write them one by one,
        # dead-letter the poison, keep the rest.
        written = 0
        for value, msg in decoded:
            try:
                written += await _write([(value, msg)])
            except BadLedgerRows as exc:
                await send_dead_letter(source="ledger", reason=str(exc), body=value)
        return written


async def _write(decoded: Sequence[tuple[bytes, LedgerMessage]]) -> int:
    rt = await runtime.started()
    rows = [r for _, m in decoded for r in m.ledger]
    guests = [g for _, m in decoded for g in m.guests]
    parking = [p for _, m in decoded for p in m.parking]
    coupons = [c for _, m in decoded for c in m.coupons]
    draws = [d for _, m in decoded for d in m.draws]
    stored = [r for _, m in decoded for r in m.stored]
    backoff = 0.5
    while True:
        try:
            t0 = time.perf_counter()
            await rt.ledger.write(rows, guests, parking, coupons, draws, stored)
            histograms["clickhouse_write_ms"].observe((time.perf_counter() - t0) * 1000)
            counters["ledger_rows_written_total"] += len(rows)
            counters["coupon_events_written_total"] += len(coupons)
            return len(rows)
        except BadLedgerRows:
            raise
        except Exception as exc:
            # Whatever the failure, the rows are not acked until written: Faust would
            # ack the batch if this raised (faust-streaming #606), losing them.
            counters["ledger_write_retries_total"] += 1
            delay = max(exc.retry_after if isinstance(exc, LedgerUnavailable) else 1.0, backoff)
            if isinstance(exc, LedgerUnavailable):
                log.warning("%s; retrying in %.1fs", exc, delay)
            else:
                log.exception("ledger write failed unexpectedly; retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


@app.agent(ledger_topic)
async def record_ledger(stream):  # type: ignore[no-untyped-def]
    """Consumes ledger messages in large batches; one ClickHouse insert per batch."""
    settings = runtime.settings
    async for messages in stream.take(settings.ledger_batch_size, within=settings.ledger_within_s):
        n = await write_ledger_messages(messages)
        log.debug("ledger: %d rows from %d messages", n, len(messages))
