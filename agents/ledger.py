"""Ledger sink: rows from the ledger topic go to ClickHouse in large inserts.

This is the one process that owns the ClickHouse store (chdb allows one per data
directory). A failed insert is retried with backoff (streams/retry.py) while the stream waits, which
holds back the offsets (nothing acked before it is written) and so applies
backpressure instead of dropping rows. Re-emitted rows collapse in the
ReplacingMergeTree, so at-least-once delivery here gives exactly-once counts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from streams.app import TRANSIENT, app, consumer_lag, ledger_topic, runtime, send_dead_letter
from streams.metrics import counters, histograms, topic_messages
from streams.retry import retrying
from streams.sinks.ledger import LedgerUnavailable
from streams.state import BOARD_SHARDS, BOARD_TTL_S

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 10.0


async def write_ledger_messages(messages: Sequence[bytes]) -> int:
    """Writes every message's rows (the core encodes them into one block per table) and
    applies the leaderboard scores they carry, retrying until ClickHouse takes them; a
    message that cannot be stored goes to the dead-letter topic with the reason. Returns
    the ledger rows written."""
    topic_messages[(ledger_topic.get_topic_name(), "in")] += len(messages)
    rt = await runtime.started()
    good = list(messages)
    while True:
        # Whatever the failure, the rows are not acked until written: Faust would ack the
        # batch if this raised (faust-streaming #606), losing them.
        async for attempt in retrying("ledger write", (Exception,), initial_s=0.5, max_s=MAX_BACKOFF_S,
                                      counter="ledger_write_retries_total", expected=(LedgerUnavailable,)):
            with attempt:
                t0 = time.perf_counter()
                result = await rt.ledger.write_messages(good, (rt.balances.ns, BOARD_SHARDS, BOARD_TTL_S))
                if not result.poison:
                    histograms["clickhouse_write_ms"].observe((time.perf_counter() - t0) * 1000)
                    # Leaderboards follow the ledger: absolute scores, the newest version wins.
                    counters["boards_scores_taken_total"] += await rt.balances.apply_board_plan(result.board_plan)
        if result.poison:
            bad = {i for i, _ in result.poison}
            for i, reason in result.poison:
                await send_dead_letter(source="ledger", reason=f"ledger rows cannot be stored: {reason}",
                                       body=good[i])
            good = [m for i, m in enumerate(good) if i not in bad]
            continue
        ledger_rows = result.rows.get("ledger", 0)
        counters["ledger_rows_written_total"] += ledger_rows
        counters["coupon_events_written_total"] += result.rows.get("coupon_events", 0)
        counters["ledger_sink_rows_total"] += sum(result.rows.values())
        counters["ledger_sink_cpu_us_total"] += int(result.cpu_s * 1e6)
        return ledger_rows


@app.agent(ledger_topic)
async def record_ledger(stream):  # type: ignore[no-untyped-def]
    """Consumes ledger messages in large batches; one ClickHouse insert per batch."""
    settings = runtime.settings
    async for messages in stream.take(settings.ledger_batch_size, within=settings.ledger_within_s):
        n = await write_ledger_messages(messages)
        log.debug("ledger: %d rows from %d messages", n, len(messages))


@app.timer(interval=2.0)
async def repair_after_redis_restart() -> None:
    """A single Redis that restarted (its run_id changed) may have come back from an AOF
    without its last acknowledged writes (docs/reliability.md). The accrual applies nothing
    on it until a repair has checked it: here, in the process that holds the ledger, once
    every ledger partition it consumes is caught up (the rows of writes Redis may have lost
    are in ClickHouse), `repair` rebuilds the members behind the durable facts and marks the
    new Redis as checked; the accrual then goes on."""
    rt = await runtime.started()
    try:
        run_id = await rt.balances.restart_unrepaired()
    except TRANSIENT:
        return  # Redis still away: asked again at the next tick
    if run_id is None:
        return
    accrual = sys.modules.get("agents.accrual")
    if accrual is not None and accrual.sends_in_flight():
        log.info("Redis restarted (run %s): the repair waits for the ledger rows still being sent", run_id)
        return
    lag = {k: v for k, v in consumer_lag().items() if f'"{ledger_topic.get_topic_name()}"' in k}
    if not lag or any(v > 0 for v in lag.values()):
        log.info("Redis restarted (run %s): the repair waits for the ledger to catch up (lag %s)", run_id,
                 sum(lag.values()) if lag else "unknown")
        return
    from streams.recovery import repair

    try:
        result = await repair()
    except TRANSIENT as exc:  # a connection the restart left dead, Redis still loading: next tick
        log.warning("Redis restarted (run %s): the repair met %r; trying again", run_id, exc)
        return
    except Exception:
        # A timer that raises stops the worker: log it, try again at the next tick.
        log.exception("Redis restarted (run %s): the repair failed; trying again", run_id)
        return
    counters["redis_restart_repairs_total"] += 1
    counters["redis_restart_members_rebuilt_total"] += int(result["rebuilt"])
    log.warning("Redis restarted (run %s): repaired before the accrual goes on: %d members rebuilt, mismatches %d "
                "-> %d", run_id, result["rebuilt"], result["mismatches_before"], result["after"]["mismatch_count"])
