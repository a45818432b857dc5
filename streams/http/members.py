"""The member and till API: balances, wallets and the synchronous operations, each a
`transact` of the member (streams/transactions.py).

GET  /v1/members/{member_id}                 balance, tier and recent movements
GET  /v1/members/{member_id}/coupons         the coupon wallet
GET  /v1/members/{member_id}/ledger          ledger rows from ClickHouse, paged
POST /v1/members/{member_id}/plates          bind a plate (auto-pay parking with points)
GET  /v1/parking/quote, /v1/parking/sessions  a parking fee before exit; a plate's sessions
POST /v1/redemptions                         spend points (Idempotency-Key)
POST /v1/redemptions/{id}/reverse            give a redemption's points back
POST /v1/coupons/redeem                      redeem a coupon at the till
POST /v1/holds, /v1/holds/{id}/release       lock points for a checkout; release them
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import (
    app,
    record_binding,
    runtime,
)
from streams.http.common import (
    account_of,
    error_response,
    json_response,
    member_operation,
    member_or_reject,
    not_merged,
    read_signed,
    reader,
    refused_by_core,
    reject,
    signed_member_request,
)
from streams.inputs import PLATE, BadInput, instant_in, int_in, is_valid_id, json_object, require
from streams.metrics import counters
from streams.state import EventMove
from streams.transactions import Commit

log = logging.getLogger(__name__)


@app.page("/v1/members/{member_id}/plates")
class MemberPlates(View):
    """Binds a car plate to a member (signed); `auto_pay` opts in to ticketless exits paid with points."""

    async def post(self, request: Request, member_id: str) -> Response:
        body = await read_signed(request, "pos")
        try:
            req = orjson.loads(body)
            plate, auto_pay = req["plate"], bool(req.get("auto_pay", False))
            require(is_valid_id(member_id) and isinstance(plate, str) and PLATE.fullmatch(plate))
        except (orjson.JSONDecodeError, KeyError, TypeError, BadInput):
            return await reject(self, 400, 'body: {"plate": "沪A12345", "auto_pay": true|false}', body, "plate")
        await not_merged(member_id)
        rt = await runtime.started()
        owner = await rt.balances.bind_plate(plate, member_id, auto_pay)
        if owner != member_id:
            return error_response(self, 409, f"plate {plate} is bound to another member", "plate")
        await record_binding("plate", f"plate:{plate}", member_id, "1" if auto_pay else "0")
        return json_response(self, {"member_id": member_id, "plate": plate, "auto_pay": auto_pay}, 200)


@app.page("/v1/parking/quote")
class ParkingQuote(View):
    """What leaving now would cost (for the gate, synchronously); nothing is applied."""

    async def get(self, request: Request) -> Response:
        await reader(request)
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
        await reader(request)
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
        await reader(request, member_id)
        asked, member_id = member_id, await account_of(member_id)
        rt = await runtime.started()
        data = await rt.balances.member(member_id)
        if data is None:
            return error_response(self, 404, f"member {member_id} has no points activity", "member_id")
        view = core_ext.member_view(rt.rules, data.get("state"), int(time.time() * 1000))
        movements = [row for raw in await rt.balances.history(member_id) for row in orjson.loads(raw)]
        return json_response(self, {
            "member_id": member_id,
            **({"merged_from": asked} if asked != member_id else {}),
            "balance": int(data.get("balance", 0)),
            "earned": int(data.get("earned", 0)),
            "debited": int(data.get("debited", 0)),
            # The name before 2026-11-30, kept for one release (docs/migrations.md).
            "clawed_back": int(data.get("debited", 0)),
            "events": int(data.get("events", 0)),
            **view,
            "recent_movements": movements[:20],
        })


@app.page("/v1/redemptions")
class Redemptions(View):
    """Spend points: checked and deducted atomically (oldest lots first), answered at once.
    The Idempotency-Key header names the redemption; a retry returns the same answer."""

    async def post(self, request: Request) -> Response:
        body = await read_signed(request, "pos")
        key = request.headers.get("Idempotency-Key", "")
        if not is_valid_id(key):
            return await reject(self, 400, "Idempotency-Key header: letters, digits, _ - . : @, 1-64 chars",
                                 body, field="Idempotency-Key")
        member_id = await member_or_reject(body)
        rt = await runtime.started()

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            record = await rt.balances.event_record(member_id, key)
            if record:
                if record.kind != "redeem":
                    return error_response(self, 409, "Idempotency-Key already used for another operation",
                                          "Idempotency-Key")
                return json_response(self, record.json(), 200)
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
        await reader(request, member_id)
        member_id = await account_of(member_id)
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
        body, member_id = await signed_member_request(request)
        return await redeem_coupon_now(self, body, member_id)


async def redeem_coupon_now(view: View, body: bytes, member_id: str,
                            redeemed: Callable[[dict[str, Any]], None] | None = None) -> Response:
    """A coupon redemption (the till's body: member, coupon, payment, where, amount) applied
    atomically with the member's state: 201 redeemed, 200 the same answer again, 409 refused.
    `redeemed` is told the answer of a redemption made now (the console audits it)."""
    rt = await runtime.started()

    async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
        try:
            changed, new_state, rows, result = core_ext.redeem_coupon(rt.rules, state, body,
                                                                      int(time.time() * 1000))
        except (core_ext.InvalidEventError, core_ext.RejectedEventError) as exc:
            raise await refused_by_core(exc, body, "coupons_refused_total") from None
        if not changed:
            return view.bytes(result.encode(), content_type="application/json", status=200)
        answer = orjson.loads(result)

        async def done() -> Response:
            if redeemed is not None:
                redeemed(answer)
            counters["coupons_redeemed_total"] += 1
            log.info("coupon %s of %s redeemed for payment %s (%d fen off)", answer["coupon_id"], member_id,
                     answer["payment_id"], answer["discount_fen"])
            return view.bytes(result.encode(), content_type="application/json", status=201)
        move = EventMove(f"coupon:{answer['coupon_id']}:{answer['payment_id']}", "coupon", 0, rows, 0, None, 0,
                         result)
        return Commit(new_state, done, move)
    return await member_operation(view, member_id, decide)


@app.page("/v1/holds")
class Holds(View):
    """Locks points for a checkout at the till. The Idempotency-Key header is the hold
    id; the payment callback that carries `hold_id` (and `points_used`) confirms it,
    POST /v1/holds/{id}/release gives it back, and the wallet check releases it when
    its time is up. Locked points cannot be spent twice and never vanish."""

    async def post(self, request: Request) -> Response:
        body = await read_signed(request, "pos")
        hold_id = request.headers.get("Idempotency-Key", "")
        try:
            req = json_object(body)
            member_id = req.get("member_id")
            require(isinstance(member_id, str) and is_valid_id(member_id) and is_valid_id(hold_id),
                    'body: {"member_id", "points", "ttl_seconds"?} and an Idempotency-Key', "body")
            member_id = str(member_id)
            points = int_in(req.get("points"), "points", 1, 1_000_000_000)
            ttl_s = int_in(req.get("ttl_seconds", 900), "ttl_seconds", 1, 86_400)
        except BadInput as exc:
            return await reject(self, 400, str(exc), body, exc.field)
        await not_merged(member_id)
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
        got = await signed_member_request(request, hold_id)
        _body, member_id = got
        return await release_hold(self, member_id, hold_id)


async def release_hold(view: View, member_id: str, hold_id: str,
                       released: Callable[[int], None] | None = None) -> Response:
    """A hold's points back to their lots (a till's release, an operator's cancel): 200 with
    the points, or 404 if the member has no such hold (used or released already)."""
    async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
        new_state, points = core_ext.release_hold(state, hold_id)
        if new_state is None:
            return error_response(view, 404, f"no hold {hold_id} of member {member_id} (used or released)",
                                  "hold_id")

        async def done() -> Response:
            if released is not None:
                released(points)
            return json_response(view, {"hold_id": hold_id, "status": "released", "points": points}, 200)
        return Commit(new_state, done)
    return await member_operation(view, member_id, decide)


@app.page("/v1/redemptions/{redemption_id}/reverse")
class RedemptionReversal(View):
    """Gives the points of a redemption back, to the very lots they came from. Idempotent."""

    async def post(self, request: Request, redemption_id: str) -> Response:
        got = await signed_member_request(request, redemption_id)
        _body, member_id = got
        rt = await runtime.started()
        reversal_id = f"{redemption_id}:reverse"

        async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
            reversed_ = await rt.balances.event_record(member_id, reversal_id)
            if reversed_:
                return json_response(self, reversed_.json(), 200)
            original = await rt.balances.event_record(member_id, redemption_id)
            if original is None or original.kind != "redeem":
                return error_response(self, 404, f"no redemption {redemption_id} of member {member_id}",
                                      "redemption_id")
            new_state, rows, result = core_ext.reverse_redemption(rt.rules, state, original.rows,
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
        await reader(request, member_id)
        member_id = await account_of(member_id)
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
