"""The mall's calls back to WeChat Pay's smart business circle (智慧商圈, docs/gateways.md):
the points sync of every circle payment once the engine has applied it, and the parking
status of members who authorised the circle.

Points sync (商圈会员积分同步, `POST /v3/businesscircle/points/notify`): a circle payment
noted by its notification (streams/http/circle.py) is due at once; the leader's timer
takes the due ones, waits until the accrual has applied the payment (its event record
says the points it earned), and sends `earn_points`, `increased_points` and the member's
`total_points`, or `earn_points: false` with `no_points_remarks` for a payment that earned
nothing. A call that fails (a timeout, 5xx, 429) is retried at once a few times with
back-off (streams/retry.py), then again later, up to every 10 minutes, until WeChat Pay
takes it. Its outcome is written to the `bindings` table (kind `circle`, key
`circle:<transaction_id>`, through the ledger topic) so it survives a loss of Redis, which
keeps it only as an expiring cache. Only the leader syncs, one payment at a time; a
payment is synced once unless a leader dies between WeChat's answer and the record (it
is then sent again: WeChat Pay keys the sync by transaction_id).

Parking (商圈会员停车状态同步, `POST /v3/businesscircle/parkings`): an entry (`IN`) or exit
(`OUT`) of a plate bound to a member who authorised the circle, when
LOYALTY_WECHATPAY_CIRCLE_BRANDID is set; best effort (retried a few times, then logged and
counted: the gate never waits for WeChat Pay).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import aiohttp
import orjson

from streams.app import record_binding, runtime
from streams.errors import LoyaltyError, TransientError
from streams.gateways.circle import (
    BEIJING,
    PARKINGS_PATH,
    POINTS_NOTIFY_PATH,
    MerchantSigner,
    parking_sync_body,
    points_sync_body,
)
from streams.metrics import counters
from streams.retry import retrying

log = logging.getLogger(__name__)

#: How long a noted circle payment waits for the accrual to apply it before it is synced as
#: earning nothing (the engine refused it: its dead letter says why).
APPLY_WAIT_MS = 15 * 60_000
#: How often a payment not applied yet is looked at again.
RECHECK_MS = 1_000
#: The longest wait between two rounds of tries of a sync that keeps failing.
MAX_LATER_MS = 10 * 60_000
REMARK_NO_POINTS = "本单不积分"  # the rules give this payment no points (category, format...)
REMARK_NOT_APPLIED = "积分失败，请联系商场"  # the engine refused the payment (dead-lettered)
CALL_TIMEOUT_S = 5.0


class WeChatUnavailable(TransientError):
    """WeChat Pay did not take a call (timeout, connection, 5xx, 429): it is tried again."""


class WeChatRefused(LoyaltyError):
    """WeChat Pay answered a call 4xx: the request itself is wrong; retrying cannot help."""


_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))
    return _session


async def call_wechat(signer: MerchantSigner, path: str, body: bytes) -> int:
    """POSTs a signed API v3 request; the status of a 2xx answer. Raises WeChatUnavailable
    (retry) or WeChatRefused (4xx, with WeChat's code and message)."""
    headers = {"Authorization": signer.authorization("POST", path, body), "Content-Type": "application/json",
               "Accept": "application/json", "User-Agent": "loyalty-engine"}
    try:
        async with _client().post(signer.api_base + path, data=body, headers=headers) as resp:
            text = (await resp.read())[:500].decode(errors="replace")
            if 200 <= resp.status < 300:
                return resp.status
            if resp.status >= 500 or resp.status == 429:
                raise WeChatUnavailable(f"{path} answered {resp.status}: {text}")
            raise WeChatRefused(f"{path} answered {resp.status}: {text}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise WeChatUnavailable(f"{path}: {exc!r}") from exc


async def _call_with_retries(signer: MerchantSigner, path: str, body: bytes, what: str) -> int:
    async for attempt in retrying(what, (WeChatUnavailable,), initial_s=0.2, max_s=2.0, attempts=3,
                                  counter="wechatpay_circle_call_retries_total"):
        with attempt:
            return await call_wechat(signer, path, body)
    raise RuntimeError("unreachable: retrying re-raises the last failure")


async def _durable(record: dict[str, Any]) -> None:
    """The record in ClickHouse (the newest row per key wins)."""
    await record_binding("circle", f"circle:{record['transaction_id']}", record["member_id"],
                         orjson.dumps(record).decode())


async def sync_due_payments() -> int:
    """One round of the leader's timer: every due circle payment synced, or put back for
    later; returns how many were synced."""
    rt = await runtime.started()
    signer = rt.circle_signer
    if signer is None:
        return 0
    synced = 0
    for transaction_id in await rt.balances.circle_due(int(time.time() * 1000)):
        if await sync_payment(signer, transaction_id):
            synced += 1
    return synced


async def sync_payment(signer: MerchantSigner, transaction_id: str) -> bool:
    """Syncs one noted payment if it is applied (or waited too long); True when synced."""
    rt = await runtime.started()
    b = rt.balances
    record = await b.circle_payment(transaction_id)
    now = int(time.time() * 1000)
    if record is None or record.get("status") != "pending":
        await b.circle_done(transaction_id)  # synced (or refused) already, or expired
        return False
    applied = await b.event_record(record["member_id"], record["event_id"])
    if applied is None and now - int(record["noted_ms"]) < APPLY_WAIT_MS:
        await b.circle_later(transaction_id, now + RECHECK_MS)
        return False
    points = applied.points if applied is not None else 0
    remark = REMARK_NO_POINTS if applied is not None else REMARK_NOT_APPLIED
    _seq, _state, balance = await b.member_state(record["member_id"])
    body = points_sync_body(transaction_id, record["appid"], record["openid"], points, now, remark, balance)
    try:
        status = await _call_with_retries(signer, POINTS_NOTIFY_PATH, body, f"points sync of {transaction_id}")
    except WeChatUnavailable as exc:
        record["attempts"] = int(record.get("attempts", 0)) + 1
        record["last_error"] = str(exc)[:300]
        later = min(MAX_LATER_MS, 1_000 * 2 ** min(record["attempts"], 10))
        await b.save_circle_payment(record)
        await b.circle_later(transaction_id, now + later)
        counters["wechatpay_circle_sync_deferred_total"] += 1
        log.warning("points sync of circle payment %s failed (%s); tried again in %d s", transaction_id, exc,
                    later // 1000)
        return False
    except WeChatRefused as exc:
        record.update(status="refused", refused_ms=now, last_error=str(exc)[:300], request=orjson.loads(body))
        await _durable(record)
        await b.save_circle_payment(record)
        await b.circle_done(transaction_id)
        counters["wechatpay_circle_sync_refused_total"] += 1
        log.error("points sync of circle payment %s refused by WeChat Pay, not tried again: %s", transaction_id, exc)
        return False
    record.update(status="synced", synced_ms=now, answer=status, request=orjson.loads(body))
    record.pop("last_error", None)
    await _durable(record)  # before the cache: a crash now syncs again rather than never
    await b.save_circle_payment(record)
    await b.circle_done(transaction_id)
    counters["wechatpay_circle_synced_total"] += 1
    log.info("circle payment %s of %s synced: %d points%s", transaction_id, record["member_id"], points,
             "" if points > 0 else f" ({remark})")
    return True


async def sync_parking(member_id: str | None, plate: str, state: str, occurred_at: str) -> None:
    """Tells WeChat Pay that a member's car entered (IN) or left (OUT) the mall; nothing for a
    plate bound to no member, a member who did not authorise the circle, or no brand id."""
    rt = await runtime.started()
    signer, brandid = rt.circle_signer, rt.settings.wechatpay_circle_brandid
    if member_id is None or signer is None or not brandid:
        return
    circle_member = await rt.balances.circle_member(member_id)
    if circle_member is None:
        return
    at = dt.datetime.fromisoformat(occurred_at).astimezone(BEIJING).isoformat(timespec="seconds")
    body = parking_sync_body(circle_member["appid"], circle_member["openid"], brandid, plate, state, at)
    try:
        await _call_with_retries(signer, PARKINGS_PATH, body, f"parking sync {state} of {plate}")
    except (WeChatUnavailable, WeChatRefused) as exc:
        counters["wechatpay_circle_parking_failed_total"] += 1
        log.error("parking sync %s of %s (member %s) not taken by WeChat Pay: %s", state, plate, member_id, exc)
        return
    counters["wechatpay_circle_parking_synced_total"] += 1
    log.info("parking sync %s of %s (member %s) sent", state, plate, member_id)
