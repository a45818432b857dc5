"""Notifier: pushes on the coupon-pushes topic go to the members' messaging webhook.

Started only when LOYALTY_PUSH_WEBHOOK_URL is set (otherwise pushes wait in Kafka).
Each batch: pushes already delivered (Redis remembers every push id answered 2xx) are
skipped, the rest are delivered concurrently (streams.pushes.Webhook: signed, timeout,
retries with backoff), failed ones dead-lettered, a `pushed` / `push_failed` coupon event goes
to the ledger for the history (a scheduled campaign's notice too: its push id as the coupon id,
kind `notice`), and only then are the delivered ones remembered: a kill in between delivers them
again under the same push ids, and the history keeps one row per push and outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from streams.app import TRANSIENT, app, ledger_topic, notifications_topic, runtime, send_dead_letter, settings
from streams.ingress import unpack_records
from streams.inputs import BadInput, require
from streams.metrics import counters, histograms, topic_messages
from streams.pushes import Delivery, Webhook, is_push, push_id_of
from streams.retry import retrying
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 256


def _history_row(msg: dict[str, Any], d: Delivery, now_ms: int) -> dict[str, Any] | None:
    coupon = msg.get("coupon")
    if msg.get("kind") == "campaign_notice":  # a scheduled campaign's notice: its delivery, by its push id
        return {
            "event_id": "push", "member_id": msg.get("member_id", ""), "kind": "pushed" if d.ok else "push_failed",
            "coupon_id": msg.get("push_id", ""), "template": "", "coupon_kind": "notice",
            "trigger": f"campaign:{msg.get('campaign', '')}:{msg.get('run', '')}", "valid_until_ms": 0,
            "occurred_at_ms": now_ms, "processed_at_ms": now_ms,
            "reason": f"attempts={d.attempts} status={d.status} latency_ms={d.latency_ms} {d.error}".strip(),
        }
    if msg.get("type") != "coupon_issued" or not isinstance(coupon, dict):
        return None
    return {
        "event_id": "push",  # one row per coupon and outcome, however often it is re-sent
        "member_id": msg.get("member_id", ""),
        "kind": "pushed" if d.ok else "push_failed",
        "coupon_id": coupon.get("coupon_id", ""),
        "template": coupon.get("template", ""),
        "trigger": coupon.get("trigger", ""),
        "coupon_kind": coupon.get("coupon_kind", ""),
        "valid_until_ms": coupon.get("valid_until_ms", 0),
        "occurred_at_ms": now_ms,
        "processed_at_ms": now_ms,
        "reason": f"attempts={d.attempts} status={d.status} latency_ms={d.latency_ms} {d.error}".strip(),
    }


async def deliver_batch(webhook: Webhook, session: aiohttp.ClientSession, values: Sequence[bytes]) -> None:
    rt = await runtime.started()
    topic_messages[(notifications_topic.get_topic_name(), "in")] += len(values)
    values = unpack_records(values)  # the accrual sends a batch's pushes in envelopes
    pending: dict[str, tuple[dict[str, Any], bytes]] = {}
    for value in values:
        try:
            msg = orjson.loads(value)
            require(isinstance(msg, dict))
        except (orjson.JSONDecodeError, BadInput):
            await send_dead_letter(source="notifier", reason="push is not a JSON object", body=value)
            continue
        if not is_push(msg):
            await send_dead_letter(source="notifier", reason="push needs member_id and push_id (or kind and event_id)",
                                   body=value)
            continue
        pending.setdefault(push_id_of(msg), (msg, value))
    ids = list(pending)
    done = await rt.balances.pushed(ids)
    todo = [pid for pid, was in zip(ids, done, strict=True) if not was]
    counters["pushes_duplicate_total"] += len(values) - len(todo)
    if not todo:
        return
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(pid: str) -> Delivery:
        async with gate:
            return await webhook.deliver(session, pid, pending[pid][1])

    results = await asyncio.gather(*(one(pid) for pid in todo))
    delivered = [d.push_id for d in results if d.ok]
    now_ms = int(time.time() * 1000)
    rows = []
    for d in results:
        msg = pending[d.push_id][0]
        if d.ok:
            counters["pushes_delivered_total"] += 1
            since = msg.get("processed_at_ms")
            if isinstance(since, int):
                # (its _sum and _count are the mean's parts: loyalty_push_latency_ms_sum / _count)
                histograms["push_latency_ms"].observe(max(0, now_ms - since))
        else:
            counters["pushes_failed_total"] += 1
            await send_dead_letter(source="notifier", reason=f"push {d.push_id} not delivered after {d.attempts} "
                                   f"attempts: {d.error}", body=pending[d.push_id][1], event_id=d.push_id)
        row = _history_row(msg, d, now_ms)
        if row is not None:
            rows.append(row)
    if rows:  # the durable record first: a kill before Redis remembers the pushes re-delivers them (same push ids)
        fut = await ledger_topic.send(value=orjson.dumps({"coupons": rows}), force=True)
        await fut
    await rt.balances.mark_pushed(delivered)
    log.info("pushes: %d delivered, %d failed, %d already delivered", len(delivered), len(todo) - len(delivered),
             len(values) - len(todo))


def webhook_of(s: Settings) -> Webhook:
    return Webhook(s.push_webhook_url, s.push_secret.get_secret_value(), s.push_timeout_s, s.push_attempts,
                   s.push_backoff_s)


async def consume_pushes(stream: Any, webhook: Webhook, batch_size: int) -> None:
    """Consumes pushes in batches; a batch is acked once each push is delivered or dead-lettered."""
    async with aiohttp.ClientSession() as session:
        async for values in stream.take(batch_size, within=0.02):
            # Redis or Kafka away: the batch is not acked until done.
            async for attempt in retrying("push batch (a backing service away)", TRANSIENT, initial_s=0.2,
                                          max_s=5.0):
                with attempt:
                    await deliver_batch(webhook, session, values)


if settings.push_webhook_url:
    WEBHOOK = webhook_of(settings)

    @app.agent(notifications_topic)
    async def deliver_pushes(stream):  # type: ignore[no-untyped-def]
        """The notifier: pushes to the members' messaging webhook."""
        await consume_pushes(stream, WEBHOOK, settings.push_batch_size)
else:
    log.warning("LOYALTY_PUSH_WEBHOOK_URL is not set: pushes wait on the coupon-pushes topic undelivered")
