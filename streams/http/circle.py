"""WeChat Pay smart business circle (智慧商圈) notifications (docs/gateways.md).

POST /v1/callbacks/wechatpay/circle/authorizations   商圈会员积分服务授权结果通知
POST /v1/callbacks/wechatpay/circle/payments         商圈会员场内支付结果通知 / 场内退款通知

Verified and decrypted as the ordinary WeChat Pay notifications (streams.gateways.wechatpay),
then by `event_type` (either path takes each, as WeChat Pay configures the two notify
URLs apart):

- `MALL_AUTH.ACTIVATE_CARD`: the openid bound to the member the card `code` names (the
  member must be registered: 503 until then, so WeChat Pay retries), and that payer's
  guest payments within the credit window credited;
- `MALL_TRANSACTION.SUCCESS`: a payment of the authorised member (`wx:<transaction_id>`,
  the ordinary notification's id: the two earn once), routed by `shop_number`, and noted
  for its points sync (streams/circle.py); an openid not authorised here yet answers 503
  (WeChat Pay sends circle payments of authorised members only: its authorisation
  notification is still to come, and the payment is retried for 24 hours);
- `MALL_REFUND.SUCCESS`: a refund (`wx-refund:<refund_id>`) of a payment seen here.

Answers as WeChat Pay expects: 204 once we have it (Kafka for a payment or refund; Redis and
the bindings' topic for an authorisation), `{"code": "FAIL", "message"}` with 4xx/5xx to be
retried, and every refusal dead-lettered (source `wechatpay_circle`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

from streams.app import TRANSIENT, app, leader_timer, record_binding, runtime
from streams.circle import sync_due_payments
from streams.gateways import GatewayError, wechatpay
from streams.gateways import circle as circle_gw
from streams.guests import credit_guest_payments
from streams.http.common import read_body
from streams.http.gateways import accept_event, refuse_notification, wechat_fail
from streams.metrics import counters

log = logging.getLogger(__name__)
SOURCE = "wechatpay_circle"
DAY_MS = 86_400_000


async def _authorized(auth: circle_gw.Authorization) -> None:
    """Binds the authorising openid to the member its card code names (GatewayError if it
    cannot be, so that WeChat Pay retries), durably, and credits its guest payments."""
    rt = await runtime.started()
    b = rt.balances
    if await b.redis.exists(b.alias_key(auth.member_id)):
        raise GatewayError("code", f"member {auth.member_id} was merged into another account: bind its card "
                           "to the account kept", status=409)
    if not await b.redis.exists(b.member_key(auth.member_id)):
        raise GatewayError("code", f"member {auth.member_id} is not registered here (yet); WeChat Pay will send "
                           "the authorisation again", status=503)
    owner = await b.bind("wechat", auth.openid, auth.member_id)
    if owner != auth.member_id:
        raise GatewayError("openid", f"openid {auth.openid} is bound to member {owner}, not {auth.member_id}",
                           status=409)
    await record_binding("identity", f"id:wechat:{auth.openid}", auth.member_id)
    await b.bind_circle_member(auth.member_id, auth.appid, auth.openid)
    await record_binding("circle_member", f"circle-member:{auth.member_id}", auth.member_id,
                         orjson.dumps({"appid": auth.appid, "openid": auth.openid}).decode())
    days = rt.rules.guest_credit_days
    since = int(time.time() * 1000) - days * DAY_MS if days > 0 else None
    credited = await credit_guest_payments("wechat", auth.openid, auth.member_id, since)
    counters["wechatpay_circle_authorized_total"] += 1
    log.info("business circle authorised by member %s (openid %s, app %s); %d guest payments credited",
             auth.member_id, auth.openid, auth.appid, credited)


async def _paid(mapped: Any) -> None:
    """A circle payment: the member must have authorised the circle here; sent like any
    gateway payment, then noted for its points sync."""
    rt = await runtime.started()
    b = rt.balances
    event = mapped.event
    openid = event["payer"]["id"]
    member_id = await b.resolve("wechat", openid)
    if member_id is None:
        raise GatewayError("openid", f"openid {openid} has not authorised the business circle here yet; WeChat "
                           "Pay will send the payment again", status=503)
    await accept_event(SOURCE, mapped)
    transaction_id = event["event_id"].removeprefix("wx:")
    known = await b.circle_payment(transaction_id)
    if known is not None:
        return  # noted (and its row written) by an earlier copy: its sync is on its way
    record = {"transaction_id": transaction_id, "event_id": event["event_id"], "member_id": member_id,
              "appid": mapped.note, "openid": openid, "amount_fen": event["amount_fen"],
              "noted_ms": int(time.time() * 1000), "status": "pending", "attempts": 0}
    # Durable first (a loss of Redis before the sync leaves the row that rebuild restores);
    # only by the copy that notes it, so a late copy never writes `pending` over `synced`.
    await record_binding("circle", f"circle:{transaction_id}", member_id, orjson.dumps(record).decode())
    await b.note_circle_payment(record, int(time.time() * 1000))


async def _refunded(mapped: Any) -> None:
    rt = await runtime.started()
    route = await rt.balances.route_of(mapped.event["refund_of"])
    openid = mapped.note
    if route is not None and route.get("payer", {}).get("id") != openid:
        raise GatewayError("openid", f"the refund names openid {openid} but its payment "
                           f"{mapped.event['refund_of']} was made by another payer")
    await accept_event(SOURCE, mapped)


async def take_notification(request: Request, view: View) -> Response:
    body = await read_body(request)
    rt = await runtime.started()
    keys = rt.wechatpay_keys
    if keys is None or rt.circle_signer is None:
        log.error("a WeChat Pay business-circle notification arrived but LOYALTY_WECHATPAY_* (APIv3 key, platform "
                  "keys, merchant number and key) is not configured")
        return wechat_fail(view, 503, "WeChat Pay business-circle notifications are not configured here")
    try:
        notification, resource = wechatpay.open_notification(request.headers, body, keys, time.time(),
                                                                      rt.settings.signature_max_age_s)
        event_type = circle_gw.event_type_of(notification)
        if event_type == circle_gw.AUTHORIZED:
            await _authorized(circle_gw.authorization(resource))
            return view.bytes(b"", status=204)
        mapped = circle_gw.to_event(event_type, resource, rt.gateways.wechatpay)
        if mapped.kind == "ignored":
            log.info("wechatpay circle notification %s ignored: %s", notification.get("id"), mapped.note)
        elif mapped.kind == "payment":
            await _paid(mapped)
        else:
            await _refunded(mapped)
    except GatewayError as exc:
        await refuse_notification(SOURCE, exc, body)
        return wechat_fail(view, exc.status, str(exc))
    return view.bytes(b"", status=204)


@app.page("/v1/callbacks/wechatpay/circle/authorizations")
class CircleAuthorizationNotification(View):
    """商圈会员积分服务授权结果通知: 204 when bound; 4xx/5xx {"code": "FAIL"} to be retried."""

    async def post(self, request: Request) -> Response:
        return await take_notification(request, self)


@app.page("/v1/callbacks/wechatpay/circle/payments")
class CirclePaymentNotification(View):
    """商圈会员场内支付结果通知 and 场内退款通知: 204 once Kafka has it; else retried."""

    async def post(self, request: Request) -> Response:
        return await take_notification(request, self)


@leader_timer(runtime.settings.wechatpay_circle_sync_interval_s)
async def sync_circle_points() -> None:
    """The leader syncs the points of circle payments applied (streams/circle.py)."""
    try:
        await sync_due_payments()
    except TRANSIENT as exc:
        log.warning("business-circle points sync skipped this round: a backing service is unavailable (%r)", exc)
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("business-circle points sync failed; the next round tries again")
