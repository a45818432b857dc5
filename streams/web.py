"""The HTTP service, on the Faust worker's web server: callbacks, member API, admin.

POST /v1/callbacks/payment          signed gateway callback -> 202 after Kafka acks
GET  /v1/members/{member_id}        balance and tier from Redis
GET  /v1/members/{id}/coupons       the member's coupon wallet
POST /v1/coupons/redeem             redeem a coupon at the till (signed)
GET  /v1/admin/ledger/totals        ledger totals from ClickHouse      (admin token)
GET  /v1/admin/coupons/totals       coupon events by kind and template (admin token)
GET  /v1/admin/reconcile            Redis balances vs ledger sums      (admin token)
GET  /v1/admin/held                 refunds held for a payment not yet applied (admin token)
POST /v1/admin/members/{id}/tier    operator sets a member's tier      (admin token)
POST /v1/admin/rules/reload         reload the rules file              (admin token)
GET  /healthz, GET /metrics
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web as aiohttp_web
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

import core_ext
from streams import bi, metrics, segments
from streams.app import (
    TRANSIENT,
    app,
    member_events_topic,
    parking_topic,
    payments_topic,
    runtime,
    send_dead_letter,
)
from streams.auth import Principal, bearer_principal, may_name_phone, names_phone, pseudonymise_body
from streams.gateways.mapping import GatewayConfigError
from streams.ingress import Coalescer, EnvelopeProducer
from streams.metrics import counters
from streams.records import (
    PLATE,
    BadInput,
    date_in,
    instant_in,
    int_in,
    is_valid_id,
    json_object,
    parking_event,
    require,
)
from streams.signing import SignatureError, verify
from streams.sinks.balances import EventMove
from streams.transactions import Commit, MemberBusy, transact

log = logging.getLogger(__name__)


def json_response(view: View, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


@aiohttp_web.middleware
async def transient_failures(request: aiohttp_web.Request, handler: Any) -> aiohttp_web.StreamResponse:
    """Redis or Kafka out of reach while a request is served: 503 with Retry-After (the
    caller tries again), not a 500; anything else unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except aiohttp_web.HTTPException:
        raise
    except TRANSIENT as exc:
        counters["requests_unavailable_total"] += 1
        log.warning("%s %s: a backing service is unavailable: %r", request.method, request.path, exc)
        return aiohttp_web.json_response({"error": "temporarily unavailable, retry"}, status=503,
                                         headers={"Retry-After": "1"})


app.web.web_app.middlewares.append(transient_failures)


def error_response(view: View, status: int, error: str, field: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return json_response(view, body, status)


async def reject(view: View, status: int, reason: str, body: bytes, field: str | None = None) -> Response:
    counters["callbacks_rejected_total"] += 1
    try:
        await send_dead_letter(source="ingress", reason=reason, field=field, body=body)
    except KafkaError:
        # The caller still gets its 4xx; the body is in our log instead.
        log.exception("could not dead-letter a rejected callback (%s): %r", reason, body[:2000])
    return error_response(view, status, reason, field)


JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded",)


async def read_body(view: View, request: Request, types: tuple[str, ...] | None = JSON_TYPES
                    ) -> tuple[bytes | None, Response | None]:
    """The body of a request within the size limit, or the answer that refuses it: 415 for
    a Content-Encoding (no gateway compresses its callbacks; the signature covers the bytes
    sent) or, where `types` is given, a Content-Type not among them; our own 413 (JSON, and
    a dead letter with the first bytes) past LOYALTY_MAX_BODY_BYTES, chunked or not: the
    body is read here up to the limit, never whole first."""
    settings = runtime.settings
    refusal: tuple[int, str, str] | None = None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if encoding not in ("", "identity"):
        refusal = (415, f"Content-Encoding: {encoding[:40]!r} is not accepted; send the body as is (identity)",
                   "Content-Encoding")
    elif types is not None and ctype not in types:
        refusal = (415, f"Content-Type: must be {' or '.join(types)}, got {ctype[:60]!r}", "Content-Type")
    # Read here up to the limit and no further, whatever the transfer encoding: the dead
    # letter of a refused body keeps its first bytes (and so its event id).
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > settings.max_body_bytes:
            break
    first = bytes(body[: settings.max_body_bytes])
    if refusal is not None:
        return None, await reject(view, refusal[0], refusal[1], first, field=refusal[2])
    if len(body) > settings.max_body_bytes:
        return None, await reject(view, 413, f"body larger than {settings.max_body_bytes} bytes", first, field="body")
    return first, None


async def _read_signed(view: View, request: Request, scope: str = "callback", *, nonce_later: bool = False,
                       strict: bool = True) -> tuple[bytes | None, Response | None]:
    """The body of a signed request, or the response that refuses it. `scope` is whose
    secret signs it: "callback" (the gateways' LOYALTY_CALLBACK_SECRET, no X-Key-Id) or
    "pos" (the POS key named by X-Key-Id; rate-limited per key). A nonce is taken once:
    here, or (`nonce_later`, the payment callback) by the caller in the round trip that
    claims the event id. The body is checked as strict JSON here unless the caller's own
    validator is strict (`strict=False`: the payment and member callbacks, whose core
    validators refuse repeated keys, and which check before any phone rewrite)."""
    settings = runtime.settings
    body, refused = await read_body(view, request)
    if body is None:
        return None, refused
    key_id = request.headers.get("X-Key-Id")
    rt = await runtime.started()
    if scope == "pos":
        if not rt.pos_keys:
            return None, error_response(view, 503, "till API disabled: LOYALTY_POS_KEYS is not set")
        secret = rt.pos_keys.get(key_id or "")
        if secret is None:
            return None, await reject(view, 401, "X-Key-Id: required, a POS key this service knows", body,
                                      field="X-Key-Id")
    else:
        if not settings.callback_secret.get_secret_value():
            return None, error_response(view, 503, "callbacks disabled: LOYALTY_CALLBACK_SECRET is not set")
        if key_id is not None:
            return None, await reject(view, 403, "X-Key-Id: POS keys may not send gateway callbacks", body,
                                      field="X-Key-Id")
        secret = settings.callback_secret.get_secret_value()
    nonce = request.headers.get("X-Nonce")
    try:
        verify(secret, request.headers.get("X-Timestamp"), nonce, request.headers.get("X-Signature"), body,
               settings.signature_max_age_s)
    except SignatureError as exc:
        return None, await reject(view, 401, str(exc), body, field="X-Signature")
    if scope == "pos" and not await rt.balances.rate_hit(f"pos:{key_id}", settings.rate_limit_pos):
        counters["requests_rate_limited_total"] += 1
        return None, json_response(view, {"error": f"rate limit of {settings.rate_limit_pos}/s for key {key_id}"},
                                   429, headers={"Retry-After": "1"})
    if not nonce_later and not await _claim_nonce((key_id or "callback", nonce or "")):
        return None, await reject(view, 401, NONCE_USED, body, field="X-Nonce")
    if strict and body.strip():
        # One JSON object, no key repeated at any depth, before anything reads it.
        try:
            core_ext.check_json_object(body)
        except core_ext.InvalidEventError as exc:
            return None, await reject(view, 400, str(exc), body, field=exc.field)
    return body, None


NONCE_USED = "X-Nonce: already used (a replayed request); sign every attempt anew"


async def _reader(view: View, request: Request, member_id: str | None = None) -> Principal | Response:
    """Who reads: the admin token, a POS key (`Bearer pos:<id>:<secret>`) or the member's own
    token; 401 without one, 403 for another member's data, 429 past the key's rate."""
    rt = await runtime.started()
    settings = rt.settings
    who = bearer_principal(request.headers.get("Authorization", ""), settings.admin_token.get_secret_value(),
                           rt.pos_keys, settings.member_token_secret.get_secret_value())
    if who is None:
        return error_response(view, 401, "Authorization: Bearer <member token | pos:<key id>:<secret> | admin token>"
                              " required")
    if member_id is not None and not who.may_read(member_id):
        return error_response(view, 403, "this member token is for another member")
    if member_id is None and who.kind == "member":
        return error_response(view, 403, "a POS key or the admin token is required here, not a member token")
    limit = {"member": settings.rate_limit_member, "pos": settings.rate_limit_pos}.get(who.kind)
    if limit is not None and not await rt.balances.rate_hit(who.client_key, limit):
        counters["requests_rate_limited_total"] += 1
        return json_response(view, {"error": f"rate limit of {limit}/s for this key"}, 429,
                             headers={"Retry-After": "1"})
    return who


class Admission:
    """Callbacks waiting for Kafka's ack. Over the limit (LOYALTY_MAX_IN_FLIGHT), or when an
    ack takes longer than LOYALTY_PUBLISH_TIMEOUT, a callback is answered 503 with
    Retry-After at once: the gateway retries later instead of timing out, and an event
    whose send did complete after all is recognised by its id when it comes again."""

    in_flight = 0


_envelopes = EnvelopeProducer(app, runtime.settings.envelope_linger_ms / 1000, runtime.settings.envelope_max_events,
                              runtime.settings.envelope_max_bytes, runtime.settings.publish_timeout_s)


async def _claim_many(claims: list[tuple[str, str]]) -> list[bool]:
    rt = await runtime.started()
    return await rt.balances.claim_nonces(claims, rt.settings.nonce_window_s)


async def _resolve_many(payers: list[tuple[str, str]]) -> list[str | None]:
    rt = await runtime.started()
    return await rt.balances.resolve_many(payers)


# Nonce claims and payer look-ups of concurrent callbacks share one Redis round trip.
_claim_nonce: Coalescer[tuple[str, str], bool] = Coalescer(_claim_many)
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
        body, refused = await _read_signed(self, request, nonce_later=True, strict=False)
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        return await admit_payment(self, body, f"callback:{request.headers.get('X-Nonce', '')}")


@app.page("/v1/callbacks/member")
class MemberCallback(View):
    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request, strict=False)
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        try:
            body, unavailable = _without_phones(self, body)
            if unavailable is not None:
                return unavailable
            event_id, member_id, kind = core_ext.validate_member_event(body, **callback_window())
        except core_ext.InvalidEventError as exc:
            return await reject(self, 400, str(exc), body, field=exc.field)
        if kind in ("tier_override", "tier_review", "wallet_check", "parking_exit", "segments", "adjustment"):
            return await reject(self, 400, f"type: {kind} is for operators and the system, not callbacks", body,
                                field="type")
        return await _publish(self, member_events_topic, member_id, body, event_id)


@app.page("/v1/callbacks/parking")
class ParkingCallback(View):
    """Entries and exits from the car park system, signed like payments; keyed by plate."""

    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request)
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        rt = await runtime.started()
        ev, field, reason = parking_event(body, set(rt.rules.car_parks))
        if ev is None:
            return await reject(self, 400, f"{field}: {reason}", body, field=field)
        return await _publish(self, parking_topic, ev["plate"], body, ev["event_id"])


@app.page("/v1/members/{member_id}/plates")
class MemberPlates(View):
    """Binds a car plate to a member (signed); `auto_pay` opts in to ticketless exits paid with points."""

    async def post(self, request: Request, member_id: str) -> Response:
        body, refused = await _read_signed(self, request, "pos")
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        try:
            req = orjson.loads(body)
            plate, auto_pay = req["plate"], bool(req.get("auto_pay", False))
            require(is_valid_id(member_id) and isinstance(plate, str) and PLATE.fullmatch(plate))
        except (orjson.JSONDecodeError, KeyError, TypeError, BadInput):
            return await reject(self, 400, 'body: {"plate": "沪A12345", "auto_pay": true|false}', body, "plate")
        rt = await runtime.started()
        owner = await rt.balances.bind_plate(plate, member_id, auto_pay)
        if owner != member_id:
            return error_response(self, 409, f"plate {plate} is bound to another member", "plate")
        return json_response(self, {"member_id": member_id, "plate": plate, "auto_pay": auto_pay}, 200)


@app.page("/v1/parking/quote")
class ParkingQuote(View):
    """What leaving now would cost (for the gate, synchronously); nothing is applied."""

    async def get(self, request: Request) -> Response:
        if not isinstance(who := await _reader(self, request), Principal):
            return who
        rt = await runtime.started()
        plate, park = request.query.get("plate", ""), request.query.get("car_park", "")
        if not PLATE.fullmatch(plate) or park not in rt.rules.car_parks:
            return error_response(self, 400, "plate and car_park (a configured car park) are required", "plate")
        session = await rt.balances.redis.hgetall(rt.balances.parking_key(park, plate))
        if not session:
            return error_response(self, 404, f"no car {plate} inside {park}", "plate")
        binding = await rt.balances.plate_binding(plate)
        member_id = binding.get("member_id")
        state = (await rt.balances.member_state(member_id))[1] if member_id else None
        now = int(time.time() * 1000)
        fee_json, _, _ = core_ext.parking_exit(rt.rules, park, "quote", member_id, state,
                                               int(session["entry_ms"]), now, 0, binding.get("auto_pay") == "1")
        return json_response(self, {"plate": plate, "car_park": park, "member_id": member_id,
                                    **orjson.loads(fee_json)})


@app.page("/v1/parking/sessions")
class ParkingSessions(View):
    async def get(self, request: Request) -> Response:
        if not isinstance(who := await _reader(self, request), Principal):
            return who
        plate = request.query.get("plate", "")
        if not PLATE.fullmatch(plate):
            return error_response(self, 400, "plate is required", "plate")
        rt = await runtime.started()
        rows = await rt.ledger.query("parking_sessions_of_plate", {"plate": plate})
        for r in rows:
            r["deductions"] = orjson.loads(r["deductions"] or "[]")
        return json_response(self, {"plate": plate, "sessions": rows})


@app.page("/v1/members/{member_id}")
class MemberView(View):
    async def get(self, request: Request, member_id: str) -> Response:
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: letters, digits, _ - . : @ only, 1-64 chars",
                                  "member_id")
        if not isinstance(who := await _reader(self, request, member_id), Principal):
            return who
        rt = await runtime.started()
        data = await rt.balances.member(member_id)
        if data is None:
            return error_response(self, 404, f"member {member_id} has no points activity", "member_id")
        view = core_ext.member_view(rt.rules, data.get("state"), int(time.time() * 1000))
        movements = [row for raw in await rt.balances.history(member_id) for row in orjson.loads(raw)]
        return json_response(self, {
            "member_id": member_id,
            "balance": int(data.get("balance", 0)),
            "earned": int(data.get("earned", 0)),
            "clawed_back": int(data.get("clawed_back", 0)),
            "events": int(data.get("events", 0)),
            **view,
            "recent_movements": movements[:20],
        })


def member_busy(view: View) -> Response:
    """The answer when a member's state kept moving for MAX_ATTEMPTS sequence-checked tries."""
    return json_response(view, {"error": "member busy, retry"}, 503, headers={"Retry-After": "1"})


async def member_operation(view: View, member_id: str,
                           decide: Callable[[int, str | None], Awaitable[Response | Commit[Response]]]) -> Response:
    """One member operation through `transact` (streams/transactions.py); 503 if busy."""
    try:
        return await transact(member_id, decide)
    except MemberBusy:
        return member_busy(view)


async def _member_or_reject(view: View, body: bytes, *path_ids: str) -> tuple[str | None, Response | None]:
    """The body's valid `member_id` (and valid ids in the path), or the 400 that refuses it."""
    member_id = _member_of(body)
    if member_id is None or not all(is_valid_id(i) for i in path_ids):
        return None, await reject(view, 400, "member_id: required, letters, digits, _ - . : @", body, "member_id")
    return member_id, None


async def _signed_member_request(view: View, request: Request, *path_ids: str
                                 ) -> tuple[bytes, str] | Response:
    """A signed request about one member: (body, member id), or the response refusing it."""
    body, refused = await _read_signed(view, request, "pos")
    if refused is not None or body is None:
        return refused  # type: ignore[return-value]
    member_id, refused = await _member_or_reject(view, body, *path_ids)
    if refused is not None or member_id is None:
        return refused  # type: ignore[return-value]
    return body, member_id


def _member_of(body: bytes) -> str | None:
    """The valid `member_id` of a JSON request body, or None."""
    try:
        member_id = orjson.loads(body).get("member_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return member_id if isinstance(member_id, str) and is_valid_id(member_id) else None


@app.page("/v1/redemptions")
class Redemptions(View):
    """Spend points: checked and deducted atomically (oldest lots first), answered at once.
    The Idempotency-Key header names the redemption; a retry returns the same answer."""

    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request, "pos")
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        key = request.headers.get("Idempotency-Key", "")
        if not is_valid_id(key):
            return await reject(self, 400, "Idempotency-Key header: letters, digits, _ - . : @, 1-64 chars",
                                 body, field="Idempotency-Key")
        member_id, refused = await _member_or_reject(self, body)
        if refused is not None or member_id is None:
            return refused  # type: ignore[return-value]
        rt = await runtime.started()

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            record = await rt.balances.event_record(member_id, key)
            if record:
                if record.get("kind") != "redeem":
                    return error_response(self, 409, "Idempotency-Key already used for another operation",
                                          "Idempotency-Key")
                return json_response(self, orjson.loads(record["result"]), 200)
            try:
                status, new_state, rows, result = core_ext.redeem(rt.rules, state, key, body,
                                                                  int(time.time() * 1000))
            except core_ext.InvalidEventError as exc:
                return await reject(self, 400, str(exc), body, field=exc.field)
            if status == "insufficient":
                counters["redemptions_refused_total"] += 1
                return json_response(self, orjson.loads(result), 409)
            if new_state is None or rows is None:
                raise RuntimeError("redeem_points answered ok without a state or rows")
            answer = orjson.loads(result)

            async def done() -> Response:
                counters["redemptions_total"] += 1
                log.info("redemption %s of %s: %d points (%s)", key, member_id, answer["points"], answer["kind"])
                return json_response(self, answer, 201)
            return Commit(new_state, done,
                          EventMove(key, "redeem", -answer["points"], rows, answer["value_fen"], None, 0, result))
        return await member_operation(self, member_id, decide)


@app.page("/v1/members/{member_id}/coupons")
class MemberCoupons(View):
    """The member's coupon wallet: active, used and expired coupons, newest first."""

    async def get(self, request: Request, member_id: str) -> Response:
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: letters, digits, _ - . : @ only, 1-64 chars", "member_id")
        if not isinstance(who := await _reader(self, request, member_id), Principal):
            return who
        rt = await runtime.started()
        _seq, state, _balance = await rt.balances.member_state(member_id)
        wallet = core_ext.coupon_wallet(rt.rules, state, int(time.time() * 1000))
        return self.bytes(b'{"member_id":' + orjson.dumps(member_id) + b',"coupons":' + wallet.encode() + b"}",
                          content_type="application/json")


@app.page("/v1/coupons/redeem")
class CouponRedemption(View):
    """核销 at the till: checks owner, validity, threshold, scope and single use and marks
    the coupon used, atomically with the member's state. The till then sends its payment
    callback with this `payment_id` as event id and the coupon in `coupon_ids`. A retry
    (same coupon, same payment_id) gets the same answer."""

    async def post(self, request: Request) -> Response:
        got = await _signed_member_request(self, request)
        if not isinstance(got, tuple):
            return got
        body, member_id = got
        rt = await runtime.started()

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            try:
                changed, new_state, rows, result = core_ext.redeem_coupon(rt.rules, state, body,
                                                                          int(time.time() * 1000))
            except core_ext.InvalidEventError as exc:
                return await reject(self, 400, str(exc), body, field=exc.field)
            except core_ext.RejectedEventError as exc:
                counters["coupons_refused_total"] += 1
                return error_response(self, 409, exc.reason, exc.field)
            if not changed:
                return self.bytes(result.encode(), content_type="application/json", status=200)
            answer = orjson.loads(result)

            async def done() -> Response:
                counters["coupons_redeemed_total"] += 1
                log.info("coupon %s of %s redeemed for payment %s (%d fen off)", answer["coupon_id"], member_id,
                         answer["payment_id"], answer["discount_fen"])
                return self.bytes(result.encode(), content_type="application/json", status=201)
            move = EventMove(f"coupon:{answer['coupon_id']}:{answer['payment_id']}", "coupon", 0, rows, 0, None, 0,
                             result)
            return Commit(new_state, done, move)
        return await member_operation(self, member_id, decide)


@app.page("/v1/holds")
class Holds(View):
    """Locks points for a checkout at the till. The Idempotency-Key header is the hold
    id; the payment callback that carries `hold_id` (and `points_used`) confirms it,
    POST /v1/holds/{id}/release gives it back, and the wallet check releases it when
    its time is up. Locked points cannot be spent twice and never vanish."""

    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request, "pos")
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        hold_id = request.headers.get("Idempotency-Key", "")
        try:
            req = json_object(body)
            member_id = req.get("member_id")
            require(isinstance(member_id, str) and is_valid_id(member_id) and is_valid_id(hold_id),
                    'body: {"member_id", "points", "ttl_seconds"?} and an Idempotency-Key', "body")
            points = int_in(req.get("points"), "points", 1, 1_000_000_000)
            ttl_s = int_in(req.get("ttl_seconds", 900), "ttl_seconds", 1, 86_400)
        except BadInput as exc:
            return await reject(self, 400, str(exc), body, exc.field)
        rt = await runtime.started()

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            held = orjson.loads(state or "{}").get("holds", {}).get(hold_id)
            if held is not None:
                return json_response(self, {"hold_id": hold_id, "status": "held", "points": held["points"],
                                            "expires_at_ms": held["expires_at_ms"]}, 200)
            try:
                status, new_state, answer = core_ext.hold_points(rt.rules, state, hold_id, points, ttl_s * 1000,
                                                                 int(time.time() * 1000))
            except core_ext.InvalidEventError as exc:
                return await reject(self, 400, str(exc), body, field=exc.field)
            if status == "insufficient":
                return json_response(self, orjson.loads(answer), 409)
            if new_state is None:
                raise RuntimeError("hold_points answered ok without a state")

            async def done() -> Response:
                counters["holds_total"] += 1
                return json_response(self, orjson.loads(answer), 201)
            # The wallet check releases the hold when its time is up.
            return Commit(new_state, done, next_check_ms=orjson.loads(answer)["expires_at_ms"])
        return await member_operation(self, member_id, decide)


@app.page("/v1/holds/{hold_id}/release")
class HoldRelease(View):
    async def post(self, request: Request, hold_id: str) -> Response:
        got = await _signed_member_request(self, request, hold_id)
        if not isinstance(got, tuple):
            return got
        _body, member_id = got

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            new_state, points = core_ext.release_hold(state, hold_id)
            if new_state is None:
                return error_response(self, 404, f"no hold {hold_id} of member {member_id} (used or released)",
                                      "hold_id")

            async def done() -> Response:
                return json_response(self, {"hold_id": hold_id, "status": "released", "points": points}, 200)
            return Commit(new_state, done)
        return await member_operation(self, member_id, decide)


@app.page("/v1/redemptions/{redemption_id}/reverse")
class RedemptionReversal(View):
    """Gives the points of a redemption back, to the very lots they came from. Idempotent."""

    async def post(self, request: Request, redemption_id: str) -> Response:
        got = await _signed_member_request(self, request, redemption_id)
        if not isinstance(got, tuple):
            return got
        _body, member_id = got
        rt = await runtime.started()
        reversal_id = f"{redemption_id}:reverse"

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            reversed_ = await rt.balances.event_record(member_id, reversal_id)
            if reversed_:
                return json_response(self, orjson.loads(reversed_["result"]), 200)
            original = await rt.balances.event_record(member_id, redemption_id)
            if original.get("kind") != "redeem":
                return error_response(self, 404, f"no redemption {redemption_id} of member {member_id}",
                                      "redemption_id")
            new_state, rows, result = core_ext.reverse_redemption(rt.rules, state, original["rows"],
                                                                  int(time.time() * 1000))
            answer = orjson.loads(result)

            async def done() -> Response:
                counters["reversals_total"] += 1
                log.info("redemption %s of %s reversed: %d points back", redemption_id, member_id, answer["points"])
                return json_response(self, answer, 201)
            return Commit(new_state, done, EventMove(reversal_id, "reverse", answer["points"], rows, 0, None, 0,
                                                     result))
        return await member_operation(self, member_id, decide)


@app.page("/v1/members/{member_id}/ledger")
class MemberLedger(View):
    """A member's ledger rows from ClickHouse, newest first, paged, by date range."""

    async def get(self, request: Request, member_id: str) -> Response:
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: invalid", "member_id")
        if not isinstance(who := await _reader(self, request, member_id), Principal):
            return who
        q = request.query
        try:
            start = instant_in(q.get("from", "1970-01-01T00:00:00+00:00"), "from")
            end = instant_in(q.get("to", "2100-01-01T00:00:00+00:00"), "to")
            limit = int(q.get("limit", "50"))
            offset = int(q.get("offset", "0"))
            require(1 <= limit <= 1000 and 0 <= offset <= 1_000_000, "limit: 1-1000; offset: 0-1000000", "limit")
        except BadInput as exc:
            return error_response(self, 400, str(exc), exc.field)
        except ValueError:
            return error_response(self, 400, "limit: 1-1000; offset: 0-1000000 (integers)", "limit")
        rt = await runtime.started()
        rows = await rt.ledger.query("member_ledger", {"member_id": member_id, "start": start, "end": end,
                                                       "limit": limit, "offset": offset})
        for r in rows:
            r["explain"] = orjson.loads(r["explain"] or "[]")
            r["lots"] = orjson.loads(r["lots"] or "[]")
        return json_response(self, {"member_id": member_id, "limit": limit, "offset": offset, "rows": rows,
                                    "next_offset": offset + limit if len(rows) == limit else None})


def admin_denied(view: View, request: Request) -> Response | None:
    token = runtime.settings.admin_token.get_secret_value()
    if not token:
        return error_response(view, 503, "admin API disabled: LOYALTY_ADMIN_TOKEN is not set")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(view, 401, "admin token missing or wrong")
    return None


@app.page("/v1/admin/coupons/totals")
class CouponTotals(View):
    """Coupon events in ClickHouse by kind and template (issued, redeemed, pushed...)."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        rt = await runtime.started()
        return json_response(self, {"rows": await rt.ledger.query("coupon_totals")})


DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"


@app.page("/dashboard")
class Dashboard(View):
    """The operators' dashboard: a static page that asks for the admin token and draws
    tiles and charts from /v1/admin/kpis (the same queries as `loyalty report`)."""

    async def get(self, request: Request) -> Response:
        return self.bytes(DASHBOARD.read_bytes(), content_type="text/html",
                          headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


@app.page("/v1/admin/kpis")
class Kpis(View):
    """KPIs from ClickHouse: ?from=YYYY-MM-DD&to=YYYY-MM-DD (local days, both included)
    [&bu=][&format=][&active_days=][&dormant_days=][&kpi=name,...] -> {"filters", "kpis": {name: rows}}."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        return await kpi_response(self, request)


async def kpi_response(view: View, request: Request) -> Response:
    rt = await runtime.started()
    q = dict(request.query)
    try:
        filters = bi.filters_from(q, int(rt.rules.utc_offset_minutes))
    except ValueError as exc:
        return error_response(view, 400, str(exc), str(exc).split(":")[0])
    names = [n for n in (q.get("kpi") or "").split(",") if n]
    unknown = set(names) - {k.name for k in bi.KPIS}
    if unknown:
        return error_response(view, 400, f"kpi: unknown {sorted(unknown)}; one of {[k.name for k in bi.KPIS]}",
                              "kpi")
    kpis = await bi.run_kpis(rt.ledger.query, filters, names or None)
    return json_response(view, {
        "filters": {"from": q.get("from") or filters.start.isoformat(), "to": q.get("to") or filters.end.isoformat(),
                    "start": filters.start.isoformat(), "end": filters.end.isoformat(), "bu": filters.bu,
                    "format": filters.format, "active_days": filters.active_days,
                    "dormant_days": filters.dormant_days},
        "kpis": kpis,
    })


@app.page("/v1/admin/liability")
class Liability(View):
    """The live points liability by expiry month, from every member's wallet in Redis."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        rt = await runtime.started()
        states = await rt.balances.states()
        months = core_ext.liability_by_expiry(rt.rules, [s for _, s in states.values()])
        return json_response(self, {"members": len(states), "total": sum(p for _, p in months),
                                    "by_expiry_month": [{"month": m, "points": p} for m, p in months]})


@app.page("/v1/admin/segments/refresh")
class SegmentsRefresh(View):
    """Computes RFM segments and tags now and sends the changes to the members' states."""

    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        report = await refresh_segments()
        return json_response(self, vars(report))


async def refresh_segments() -> segments.RefreshReport:
    rt = await runtime.started()

    async def send(member_id: str, body: bytes) -> None:
        fut = await member_events_topic.send(key=member_id.encode(), value=body, force=True)
        await fut
    return await segments.refresh(rt.ledger.query, rt.ledger.insert_segments, send, segments.SegmentRules(),
                                  dt.datetime.now(dt.UTC))


if runtime.settings.segments_interval_s > 0:

    @app.timer(interval=runtime.settings.segments_interval_s, on_leader=True)
    async def scheduled_segments_refresh() -> None:
        """The scheduled refresh (LOYALTY_SEGMENTS_INTERVAL), on one worker of the group."""
        try:
            await refresh_segments()
        except Exception:  # a failed round must not stop the worker (Faust crashes on a timer's error)
            log.exception("scheduled segments refresh failed; the next round tries again")


@app.page("/v1/admin/ledger/totals")
class LedgerTotals(View):
    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        rt = await runtime.started()
        rows = await rt.ledger.query("ledger_totals")
        return json_response(self, rows[0] if rows else {})


async def reconcile() -> dict[str, Any]:
    """Compares every member's Redis balance with the sum of their ledger rows."""
    rt = await runtime.started()
    states = await rt.balances.states()
    redis_balances = {m: b for m, (b, _) in states.items()}
    ledger = {r["member_id"]: int(r["points"]) for r in await rt.ledger.query("ledger_balances")}
    mismatches = []
    for m in sorted(set(redis_balances) | set(ledger)):
        balance, state_json = states.get(m, (0, None))
        wallet = core_ext.wallet_total(state_json)
        if balance != ledger.get(m, 0) or balance != wallet:
            mismatches.append({"member_id": m, "redis": balance, "ledger": ledger.get(m, 0), "wallet": wallet})
    return {
        "members": len(set(redis_balances) | set(ledger)),
        "redis_total": sum(redis_balances.values()),
        "ledger_total": sum(ledger.values()),
        "mismatches": mismatches[:100],
        "mismatch_count": len(mismatches),
        "clean": not mismatches,
    }


@app.page("/v1/admin/reconcile")
class Reconcile(View):
    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        return json_response(self, await reconcile())


async def held_refunds(limit: int = 1000) -> dict[str, Any]:
    """Refunds held for a payment not applied yet, oldest first, with their deadlines."""
    rt = await runtime.started()
    total, entries = await rt.balances.held_list(limit)
    now_ms, wait_ms = int(time.time() * 1000), rt.settings.held_wait_s * 1000
    for e in entries:
        e["held_for_s"] = max(0, (now_ms - (e["deadline_ms"] - wait_ms)) // 1000)
        e["deadline"] = dt.datetime.fromtimestamp(e["deadline_ms"] / 1000, dt.UTC).isoformat(timespec="seconds")
    return {"payments": total, "refunds": sum(e["refunds"] for e in entries), "wait_s": rt.settings.held_wait_s,
            "held": entries}


@app.page("/v1/admin/held")
class HeldRefunds(View):
    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        raw = request.query.get("limit", "1000")
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            return json_response(self, {"error": "limit: an integer from 1 to 10000"}, 400)
        return json_response(self, await held_refunds(int(raw)))


@app.page("/v1/admin/settlement/statement")
class SettlementStatement(View):
    """Per account net positions of one local day, for the group, a BU or a merchant."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        q = request.query
        try:
            day = date_in(q.get("date", ""), "date")
        except BadInput as exc:
            return error_response(self, 400, f"{exc} (required)", "date")
        bu, merchant = q.get("bu", ""), q.get("merchant", "")
        if (bu and not is_valid_id(bu)) or (merchant and not is_valid_id(merchant)):
            return error_response(self, 400, "bu / merchant: invalid id", "bu")
        return json_response(self, await settlement_statement(day, bu, merchant))


async def settlement_statement(day: dt.date, bu: str = "", merchant: str = "") -> dict[str, Any]:
    rt = await runtime.started()
    offset_s = int(rt.rules.utc_offset_minutes) * 60
    params = {"day": day, "bu": bu, "merchant": merchant, "offset_s": offset_s}
    accounts = await rt.ledger.query("settlement_statement", params)
    ledger = (await rt.ledger.query("ledger_day_points", params))[0]
    members_points = sum(int(a["points"]) for a in accounts if a["account"] == "members")
    positions = []
    for a in accounts:
        amount = int(a["amount_fen"])
        if a["account"].startswith(("bu:", "merchant:")) and amount != 0:
            positions.append({"party": a["account"], "amount_fen": abs(amount),
                              "direction": "is owed" if amount > 0 else "owes"})
    return {
        "date": day.isoformat(), "bu": bu or None, "merchant": merchant or None,
        "accounts": [{"account": a["account"], "amount_fen": int(a["amount_fen"]), "points": int(a["points"]),
                      "lines": int(a["lines"])} for a in accounts],
        "positions": positions,
        "balanced": sum(int(a["amount_fen"]) for a in accounts) == 0 and sum(int(a["points"]) for a in accounts) == 0,
        "ledger_points": int(ledger["points"] or 0),
        "members_points": members_points,
        "ties_out": members_points == int(ledger["points"] or 0),
    }


@app.page("/v1/admin/rebuild")
class Rebuild(View):
    """Recreates Redis state from the ledger, one page of members per call."""

    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        from streams.recovery import rebuild_page

        try:
            body = orjson.loads(await request.read() or b"{}")
            offset, limit = int(body.get("offset", 0)), int(body.get("limit", 500))
            require(offset >= 0 and 1 <= limit <= 10_000)
        except (orjson.JSONDecodeError, ValueError, BadInput, AttributeError):
            return error_response(self, 400, 'body: {"offset": >= 0, "limit": 1-10000}')
        return json_response(self, await rebuild_page(offset, limit))


@app.page("/v1/admin/members/{member_id}/tier")
class MemberTier(View):
    """An operator's tier override with an end date; applied in order with the
    member's events (through the member-events topic), answered once applied."""

    async def post(self, request: Request, member_id: str) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: invalid", "member_id")
        rt = await runtime.started()
        try:
            body = orjson.loads(await request.read())
            tier = body["tier"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return error_response(self, 400, 'body must be {"tier": "<tier id>", "until": "<ISO-8601>"}', "tier")
        if tier not in rt.rules.tier_ids:
            return error_response(self, 400, f"unknown tier {tier!r}; tiers: {rt.rules.tier_ids}", "tier")
        now = dt.datetime.now(dt.UTC)
        until = body.get("until") or (now + dt.timedelta(days=365)).isoformat(timespec="seconds")
        event_id = f"override-{member_id}-{uuid.uuid4().hex[:12]}"
        event = orjson.dumps({"event_id": event_id, "type": "tier_override", "member_id": member_id,
                              "occurred_at": now.isoformat(timespec="milliseconds"), "tier": tier, "until": until})
        try:
            core_ext.validate_member_event(event)
        except core_ext.InvalidEventError as exc:
            return error_response(self, 400, str(exc), exc.field)
        fut = await member_events_topic.send(key=member_id.encode(), value=event, force=True)
        await fut
        applied = await _wait_applied(member_id, event_id, timeout_s=10.0)
        log.info("operator override of %s to %s until %s (%s)", member_id, tier, until,
                 "applied" if applied else "queued")
        return json_response(self, {"member_id": member_id, "tier": tier, "until": until, "applied": applied},
                             200 if applied else 202)


@app.page("/v1/admin/members/{member_id}/adjustments")
class MemberAdjustment(View):
    """An operator's manual adjustment with a reason (admin token): points added to the
    month's lot, or taken from the oldest lots (never below zero). Idempotent by
    `adjustment_id`; applied in order with the member's events, answered once applied."""

    async def post(self, request: Request, member_id: str) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        body, refused = await read_body(self, request, None)
        if body is None:
            return refused  # type: ignore[return-value]
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: invalid", "member_id")
        try:
            req = json_object(body)
            adjustment_id = req["adjustment_id"]
            require(isinstance(adjustment_id, str) and is_valid_id(adjustment_id) and len(adjustment_id) <= 48)
        except (orjson.JSONDecodeError, KeyError, TypeError, BadInput):
            return error_response(self, 400, 'body: {"adjustment_id": "<id, 1-48 chars>", "points": <±int>, '
                                  '"reason": "<3-200 chars>"}', "adjustment_id")
        event_id = f"adj:{adjustment_id}"
        now = dt.datetime.now(dt.UTC)
        event = orjson.dumps({"event_id": event_id, "type": "adjustment", "member_id": member_id,
                              "occurred_at": now.isoformat(timespec="milliseconds"),
                              "points": req.get("points"), "reason": req.get("reason")})
        try:
            core_ext.validate_member_event(event)
        except core_ext.InvalidEventError as exc:
            return error_response(self, 400, str(exc), exc.field)
        rt = await runtime.started()
        points = int(req["points"])
        if points < 0 and not await rt.balances.event_record(member_id, event_id):
            _seq, state, _balance = await rt.balances.member_state(member_id)
            available = int(core_ext.member_view(rt.rules, state, int(now.timestamp() * 1000))["available"])
            if available < -points:
                return error_response(self, 409, f"the member has {available} points available, the adjustment "
                                      f"takes {-points}", "points", available=available)
        fut = await member_events_topic.send(key=member_id.encode(), value=event, force=True)
        await fut
        applied = await _wait_applied(member_id, event_id, timeout_s=10.0)
        log.info("operator adjustment %s of %s: %+d points, reason %r (%s)", adjustment_id, member_id, points,
                 req["reason"], "applied" if applied else "queued")
        return json_response(self, {"member_id": member_id, "adjustment_id": adjustment_id, "points": points,
                                    "applied": applied}, 201 if applied else 202)


async def _wait_applied(member_id: str, event_id: str, timeout_s: float) -> bool:
    rt = await runtime.started()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await rt.balances.event_record(member_id, event_id):
            return True
        await asyncio.sleep(0.05)
    return False


@app.page("/v1/admin/rules/simulate")
class RulesSimulate(View):
    """Replays stored payments through candidate rules and the live ones, side by side."""

    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        rt = await runtime.started()
        try:
            body = json_object(await request.read())
            text, start, end = body["rules"], body["from"], body["to"]
            path = body.get("path", "candidate.toml")
            require(all(isinstance(v, str) for v in (text, start, end, path)), "rules, from, to, path: strings")
            start_dt, end_dt = instant_in(start, "from"), instant_in(end, "to")
        except (KeyError, TypeError, ValueError) as exc:
            return error_response(self, 400, f'body must be {{"rules": toml, "from": iso, "to": iso}}: {exc}')
        try:
            candidate = core_ext.RuleSet.from_toml(text, path)
        except core_ext.RulesError as exc:
            return error_response(self, 400, str(exc), exc.field, line=exc.line, file=exc.file)
        rows = await rt.ledger.query("payment_history", {"start": start_dt, "end": end_dt})
        bodies = [history_body(r) for r in rows]
        live = core_ext.simulate(rt.rules, bodies)
        cand = core_ext.simulate(candidate, bodies)
        return json_response(self, {
            "from": start, "to": end, "payments": len(bodies),
            "live": {"version": rt.rules.version, **live},
            "candidate": {"version": candidate.version, **cand},
        })


def history_body(row: dict[str, Any]) -> bytes:
    """A stored ledger row of a payment or refund, as the event body it came from."""
    event: dict[str, Any] = {
        "event_id": row["event_id"], "type": "payment" if row["kind"] == "earn" else "refund",
        "occurred_at": dt.datetime.fromtimestamp(row["occurred_at_ms"] / 1000, dt.UTC).isoformat(
            timespec="milliseconds"),
        "member_id": row["member_id"], "bu_id": row["bu_id"], "merchant_id": row["merchant_id"],
        "category": row["category"], "amount_fen": row["amount_fen"], "channel": row["channel"] or "other",
    }
    if row["refund_of"]:
        event["refund_of"] = row["refund_of"]
    return orjson.dumps(event)


@app.page("/v1/admin/rules/reload")
class RulesReload(View):
    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        try:
            rules = runtime.reload_rules()
        except core_ext.RulesError as exc:
            return error_response(self, 400, str(exc), exc.field, line=exc.line, file=exc.file)
        except GatewayConfigError as exc:
            return error_response(self, 400, str(exc), "gateways")
        return json_response(self, {"version": rules.version, "gateways": runtime.gateways.path})


@app.page("/healthz")
class Health(View):
    async def get(self, request: Request) -> Response:
        rt = await runtime.started()
        await rt.balances.redis.ping()
        try:
            assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        except Exception:  # not yet subscribed
            assigned = []
        return json_response(self, {"status": "ok", "rules_version": rt.rules.version, "assigned": assigned})


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(metrics.render().encode(), content_type="text/plain")
