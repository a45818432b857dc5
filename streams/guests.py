"""Guest payments credited to the member their payer became: a payer bound to no member
pays as a guest (kept as a compact fact in Redis, docs/rules.md); once an external id of
theirs is bound (a registration naming it, a WeChat business-circle authorisation), the
payments made within the credit window are sent again under the member's id, each with
its own event id, so a redelivery or a second binding credits nothing twice."""

from __future__ import annotations

import asyncio
import logging

import orjson

import core_ext
from streams.app import payments_topic, runtime
from streams.metrics import counters

log = logging.getLogger(__name__)


async def credit_guest_payments(kind: str, external_id: str, member_id: str, since_ms: int | None) -> int:
    """Sends the payer's guest payments made at or after `since_ms` (none when None) as the
    member's, then forgets the payer's guest facts; returns how many were sent."""
    rt = await runtime.started()
    futures = []
    for event in await rt.balances.guest_payments(kind, external_id):
        event["member_id"] = member_id
        payment = orjson.dumps(event)
        if since_ms is None or core_ext.decode_event(payment).occurred_at_ms < since_ms:
            continue
        futures.append(await payments_topic.send(key=member_id.encode(), value=payment, force=True))
    if futures:
        await asyncio.gather(*futures)
    await rt.balances.forget_guest(kind, external_id)
    if futures:
        counters["guest_payments_credited_total"] += len(futures)
        log.info("credited %d guest payments of %s %s to member %s", len(futures), kind, external_id, member_id)
    return len(futures)
