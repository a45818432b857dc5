"""The ingress: signed callbacks of payments, member events and parking, admitted
(checked, claimed by event id, phones pseudonymised) and published in envelopes, each
answered 202 only once Kafka has it (docs/envelopes.md).

POST /v1/callbacks/payment          a payment or refund (gateway-signed) -> 202 after Kafka acks
POST /v1/callbacks/member           a member event (registration, sign-in, referral, review...)
POST /v1/callbacks/parking          a car park's entry or exit
"""

from __future__ import annotations

import logging
import time

import orjson
from faust.web import Request, Response, View

import core_ext
from streams import metrics
from streams.app import (
    app,
    member_events_topic,
    parking_topic,
    payments_topic,
    runtime,
)
from streams.auth import may_name_phone, names_phone, pseudonymise_body
from streams.http.common import NONCE_USED, error_response, json_response, read_signed, reject
from streams.ingress import Coalescer, EnvelopeProducer
from streams.inputs import parking_event
from streams.metrics import counters

log = logging.getLogger(__name__)


class Admission:
    """Callbacks waiting for Kafka's ack. Over the limit (LOYALTY_MAX_IN_FLIGHT), or when an
    ack takes longer than LOYALTY_PUBLISH_TIMEOUT, a callback is answered 503 with
    Retry-After at once: the gateway retries later instead of timing out, and an event
    whose send did complete after all is recognised by its id when it comes again."""

    in_flight = 0


_envelopes = EnvelopeProducer(app, runtime.settings.envelope_linger_ms / 1000, runtime.settings.envelope_max_events,
                              runtime.settings.envelope_max_bytes, runtime.settings.publish_timeout_s)


async def _resolve_many(payers: list[tuple[str, str]]) -> list[str | None]:
    rt = await runtime.started()
    return await rt.balances.resolve_many(payers)


# Payer look-ups of concurrent callbacks share one Redis round trip.
_resolve_payer: Coalescer[tuple[str, str], str | None] = Coalescer(_resolve_many)


async def publish(topic: object, key: str, body: bytes, event_id: str) -> bool:
    """Sends an accepted event in its partition's next envelope and waits for Kafka's ack
    (acks=all); False if Kafka did not take it in time or too many callbacks are waiting."""
    settings = runtime.settings
    if Admission.in_flight >= settings.max_in_flight:
        counters["callbacks_shed_total"] += 1
        return False
    Admission.in_flight += 1
    try:
        ok = await _envelopes.publish(topic, key.encode(), body)
    finally:
        Admission.in_flight -= 1
    if not ok:
        counters["callbacks_unavailable_total"] += 1
        log.error("kafka did not take callback %s", event_id)
        return False
    counters["callbacks_accepted_total"] += 1
    metrics.topic_messages[(topic.get_topic_name(), "out")] += 1  # type: ignore[attr-defined]
    return True


async def _publish(view: View, topic: object, key: str, body: bytes, event_id: str) -> Response:
    if not await publish(topic, key, body, event_id):
        return json_response(view, {"error": "temporarily unavailable, retry"}, 503, headers={"Retry-After": "1"})
    return json_response(view, {"event_id": event_id, "status": "accepted"}, 202)


async def payment_key(body: bytes, member_id: str | None, payer: tuple[str, str] | None) -> tuple[str, bytes]:
    """The Kafka key of a validated payment or refund (its member, or its guest payer, so
    one member's events stay in order) and its body with the payer resolved to the member."""
    if member_id is None and payer is not None:
        member_id = await _resolve_payer(payer)
        if member_id is None:
            counters["callbacks_guest_total"] += 1
            return f"guest:{payer[0]}:{payer[1]}", body
        body = orjson.dumps({**orjson.loads(body), "member_id": member_id})
    if member_id is None:  # resolved above, or a guest returned
        raise RuntimeError("payment_key: no member after resolving the payer")
    return member_id, body


def _without_phones(view: View, body: bytes) -> tuple[bytes, Response | None]:
    """The body with phone numbers replaced by their keyed pseudonyms before it reaches
    Kafka, Redis or ClickHouse; 503 if no LOYALTY_PII_KEY is configured to make them.
    A body that may name a phone is first checked strictly (one JSON object, no key
    repeated: the rewrite would otherwise settle a repeated key), then read decoded (a
    kind written with escapes is a phone all the same). Raises InvalidEventError."""
    if not may_name_phone(body):
        return body, None
    core_ext.check_json_object(body)
    if not names_phone(body):
        return body, None
    key = runtime.settings.pii_key.get_secret_value()
    if not key:
        return body, error_response(view, 503, "phone numbers refused: LOYALTY_PII_KEY is not set")
    return pseudonymise_body(body, key), None


def callback_window() -> dict[str, int]:
    """The sanity window on a callback's occurred_at, as the validators take it."""
    settings = runtime.settings
    return {"now_ms": int(time.time() * 1000), "max_age_days": settings.occurred_max_age_days,
            "max_ahead_days": settings.occurred_max_ahead_days}


async def _claim_events_many(claims: list[tuple[str, str, str | None]]) -> list[tuple[bool, str | None]]:
    rt = await runtime.started()
    return await rt.balances.claim_events(claims, rt.settings.event_claim_days * 86_400, rt.settings.nonce_window_s)


# Event-id claims (with the callback's nonce, if it is still to take) of concurrent callbacks
# share one Redis round trip.
_claim_event: Coalescer[tuple[str, str, str | None], tuple[bool, str | None]] = Coalescer(_claim_events_many)


def _claimant(member_id: str | None, payer: tuple[str, str] | None) -> str:
    return f"member {member_id}" if member_id is not None else f"payer {payer[0]}:{payer[1]}" if payer else "-"


async def claim_event(event_id: str, member_id: str | None, payer: tuple[str, str] | None,
                      nonce: str | None = None) -> tuple[bool, str | None]:
    """Claims a payment's event id for the member (or payer) it names, and takes `nonce`
    (`scope:nonce`) in the same round trip: (nonce new, None when the id is this sender's
    — first time or a retry — else the claim of whoever sent it first) (docs/security.md)."""
    claimant = _claimant(member_id, payer)
    fresh, first = await _claim_event((event_id, claimant, nonce))
    return fresh, None if first is None or first == claimant else first


async def admit_payment(view: View, body: bytes, nonce: str) -> Response:
    """Validates a signed payment or refund body (strict JSON, phones pseudonymised, time
    window, maximum payment), takes its nonce and claims its event id (one round trip),
    and sends it on; the answer to give."""
    try:
        body, unavailable = _without_phones(view, body)
        if unavailable is not None:
            return unavailable
        rt = await runtime.started()
        event_id, member_id, _kind, payer = core_ext.validate_payment(body, rt.rules, **callback_window())
    except core_ext.RejectedEventError as exc:
        counters["payments_over_limit_total"] += 1
        return await reject(view, 400, str(exc), body, field=exc.field)
    except core_ext.InvalidEventError as exc:
        return await reject(view, 400, str(exc), body, field=exc.field)
    fresh, first = await claim_event(event_id, member_id, payer, nonce)
    if not fresh:
        return await reject(view, 401, NONCE_USED, body, field="X-Nonce")
    if first is not None:
        counters["events_claimed_by_another_total"] += 1
        return await reject(view, 409, f"event_id: {event_id} was sent first for {first}; this callback names "
                            f"{_claimant(member_id, payer)} (event ids are unique across members)", body,
                            field="event_id")
    key, body = await payment_key(body, member_id, payer)
    return await _publish(view, payments_topic, key, body, event_id)


@app.page("/v1/callbacks/payment")
class PaymentCallback(View):
    async def post(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            return await self._post(request)
        finally:
            metrics.histograms["callback_ms"].observe((time.perf_counter() - t0) * 1000)

    async def _post(self, request: Request) -> Response:
        body = await read_signed(request, nonce_later=True, strict=False)
        return await admit_payment(self, body, f"callback:{request.headers.get('X-Nonce', '')}")


@app.page("/v1/callbacks/member")
class MemberCallback(View):
    async def post(self, request: Request) -> Response:
        body = await read_signed(request, strict=False)
        try:
            body, unavailable = _without_phones(self, body)
            if unavailable is not None:
                return unavailable
            event_id, member_id, kind = core_ext.validate_member_event(body, **callback_window())
        except core_ext.InvalidEventError as exc:
            return await reject(self, 400, str(exc), body, field=exc.field)
        if kind not in CALLBACK_MEMBER_KINDS:  # an allow list: a kind added later is the engine's own
            return await reject(self, 400, f"type: {kind} is for operators and the system, not callbacks "
                                f"(callbacks send {', '.join(CALLBACK_MEMBER_KINDS)})", body, field="type")
        return await _publish(self, member_events_topic, member_id, body, event_id)


#: The member events an outside system may send; the others (tier overrides, adjustments,
#: grants, merges, erasures, the timers' own) come from the console and the engine only.
CALLBACK_MEMBER_KINDS = ("register", "profile", "sign_in", "referral", "review")


@app.page("/v1/callbacks/parking")
class ParkingCallback(View):
    """Entries and exits from the car park system, signed like payments; keyed by plate."""

    async def post(self, request: Request) -> Response:
        body = await read_signed(request)
        rt = await runtime.started()
        ev, field, reason = parking_event(body, set(rt.rules.car_parks))
        if ev is None:
            return await reject(self, 400, f"{field}: {reason}", body, field=field)
        return await _publish(self, parking_topic, ev["plate"], body, ev["event_id"])
