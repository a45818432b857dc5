"""Payment gateways' notifications, as they really arrive (docs/gateways.md).

POST /v1/callbacks/wechatpay   WeChat Pay API v3 payment and refund notifications
POST /v1/callbacks/alipay      Alipay asynchronous notifications (form-encoded)

Each is verified with the gateway's key, mapped to our payment or refund event
(the gateway's transaction / refund id is the event id, so its retries change
nothing twice), validated by the core like any callback, and answered as the
gateway expects only after Kafka has the event. Every refusal is answered so that
the gateway retries, and the body goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, payments_topic, record_binding, runtime, send_dead_letter
from streams.gateways import GatewayError, Mapped, alipay, wechatpay
from streams.http.callbacks import callback_window, claim_event, payment_key, publish
from streams.http.common import FORM_TYPES, read_body
from streams.metrics import count_unrouted, counters

log = logging.getLogger(__name__)


async def _dead_letter(source: str, exc: GatewayError, body: bytes) -> None:
    counters["gateway_refused_total"] += 1
    try:
        await send_dead_letter(source=source, reason=str(exc), field=exc.field, body=body)
    except Exception:  # Kafka down: the gateway retries anyway; the body is in our log
        log.exception("could not dead-letter a %s notification (%s): %r", source, exc, body[:2000])


async def refuse_notification(source: str, exc: GatewayError, body: bytes) -> None:
    """A notification refused: logged, its merchant counted if unrouted, and dead-lettered
    unless Kafka was what failed (the gateway sends it again then)."""
    log.warning("%s notification refused (%d): %s", source, exc.status, exc)
    if exc.unrouted is not None:
        count_unrouted(source, exc.unrouted)
    if exc.field != "kafka":
        await _dead_letter(source, exc, body)


async def accept_event(source: str, mapped: Mapped) -> None:
    """Validates the mapped event in the core and sends it to Kafka (acks=all).

    Raises GatewayError when the event cannot be taken: the caller answers so that
    the gateway retries."""
    event = mapped.event
    rt = await runtime.started()
    if mapped.kind == "refund" and "payer" not in event:
        # A WeChat refund names no payer: its payment's route says who and where.
        route = await rt.balances.route_of(event["refund_of"])
        if route is None:
            raise GatewayError("transaction_id", f"refund of {event['refund_of']}, a payment not seen here yet; "
                               "the gateway will send it again", status=503)
        event = {**event, **route}
    elif mapped.kind == "refund":
        # The payment's route is known here: a refund must name the same payer and place.
        route = await rt.balances.route_of(event["refund_of"])
        for field, booked in (route or {}).items():
            if event.get(field) != booked:
                raise GatewayError(field, f"the refund names {_shown(event.get(field))} but its payment "
                                   f"{event['refund_of']} was booked with {_shown(booked)}")
    body = orjson.dumps(event)
    try:
        event_id, member_id, _kind, payer = core_ext.validate_payment(body, rt.rules, **callback_window())
    except core_ext.RejectedEventError as exc:
        counters["payments_over_limit_total"] += 1
        raise GatewayError(exc.field, f"refused: {exc.reason}") from None
    except core_ext.InvalidEventError as exc:
        raise GatewayError(exc.field, f"mapped event refused: {exc.reason}") from None
    _fresh, first = await claim_event(event_id, member_id, payer)
    if first is not None:
        counters["events_claimed_by_another_total"] += 1
        raise GatewayError("event_id", f"{event_id} was sent first for {first}", status=409)
    if mapped.kind == "payment":
        # Kept before the send, so a refund that follows at once finds it.
        route = {k: event[k] for k in ("payer", "bu_id", "merchant_id", "category")}
        await rt.balances.remember_route(event_id, route, rt.settings.gateway_route_days)
        # Durable too: a refund notification after Redis lost the route still finds it.
        await record_binding("route", f"gwpay:{event_id}", "", orjson.dumps(route).decode())
    key, body = await payment_key(body, member_id, payer)
    if not await publish(payments_topic, key, body, event_id):
        raise GatewayError("kafka", "temporarily unavailable", status=503)
    counters[f"gateway_{source}_{mapped.kind}_total"] += 1
    log.info("%s %s %s accepted (%s fen)", source, mapped.kind, event_id, event["amount_fen"])


def _shown(value: Any) -> str:
    """A route value in a reason: a payer as kind:id (its id masked like a phone would be)."""
    if isinstance(value, dict):
        return f"{value.get('kind')}:{value.get('id')}"
    return repr(value)


def wechat_fail(view: View, status: int, message: str) -> Response:
    return view.bytes(orjson.dumps({"code": "FAIL", "message": message}), content_type="application/json",
                      status=status)


@app.page("/v1/callbacks/wechatpay")
class WeChatPayNotification(View):
    """WeChat Pay v3: 204 when we have it (the gateway stops); 4xx/5xx {"code": "FAIL"} to be retried."""

    async def post(self, request: Request) -> Response:
        body = await read_body(request)
        rt = await runtime.started()
        keys = rt.wechatpay_keys
        if keys is None:
            log.error("a WeChat Pay notification arrived but LOYALTY_WECHATPAY_* is not configured")
            return wechat_fail(self, 503, "WeChat Pay notifications are not configured here")
        try:
            notification, resource = wechatpay.open_notification(request.headers, body, keys, time.time(),
                                                                          rt.settings.signature_max_age_s)
            mapped = wechatpay.to_event(notification, resource, rt.gateways.wechatpay)
            if mapped.kind == "ignored":
                log.info("wechatpay notification %s ignored: %s", notification.get("id"), mapped.note)
                return self.bytes(b"", status=204)
            await accept_event("wechatpay", mapped)
        except GatewayError as exc:
            await refuse_notification("wechatpay", exc, body)
            return wechat_fail(self, exc.status, str(exc))
        return self.bytes(b"", status=204)


@app.page("/v1/callbacks/alipay")
class AlipayNotification(View):
    """Alipay: the body `success` when we have it; anything else (here `fail`) is retried."""

    async def post(self, request: Request) -> Response:
        body = await read_body(request, FORM_TYPES)
        rt = await runtime.started()
        if rt.alipay_key is None:
            log.error("an Alipay notification arrived but LOYALTY_ALIPAY_PUBLIC_KEY is not configured")
            return self.text("fail", status=503)
        try:
            params = alipay.parse_form(body)
            alipay.verify(params, rt.alipay_key)
            mapped = alipay.to_event(params, rt.gateways.alipay)
            if mapped.kind == "ignored":
                log.info("alipay notification %s ignored: %s", params.get("notify_id"), mapped.note)
                return self.text("success")
            await accept_event("alipay", mapped)
        except GatewayError as exc:
            await refuse_notification("alipay", exc, body)
            return self.text("fail", status=exc.status)
        return self.text("success")
