"""Engagement over HTTP (over 400 lines: seven endpoints that share one `engage` step):
games, sign-in plans, leaderboards, partner exchange and stored value. Every write is
computed by the core (`core_ext.engage`) from the member's stored state and applied in
one atomic, sequence-checked Lua step (points, stored value, prize stock, the event
record that makes it idempotent, and the ledger outbox), then its rows go to the ledger
topic. The Idempotency-Key names the operation: a retry gets the stored answer, never a
second effect.

POST /v1/games/{game}/plays                    play (signed, POS/app key)
POST /v1/sign-in-plans/{plan}/sign-ins          sign in, make up a day, or stake a contract
GET  /v1/leaderboards/{period}/{scope}          top members: period week|month, scope group|<bu>
GET  /v1/members/{id}/rank                      a member's own rank
POST /v1/exchanges                              points out to a partner (pending until confirmed)
POST /v1/partners/{partner}/confirmations       the partner confirms or fails one (gateway-signed)
POST /v1/partners/{partner}/credits             points in from a partner (gateway-signed)
POST /v1/stored-value/topups | payments | refunds
GET  /v1/members/{id}/engagement                plays today, cards, plans, exchanges, stored value
GET  /v1/admin/stored-value/reconcile           Redis stored value vs its ledger (admin token)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, notifications_topic, payments_topic, runtime
from streams.auth import Principal
from streams.http.common import (
    Refused,
    account_of,
    admin_denied,
    error_response,
    json_response,
    member_operation,
    read_signed,
    reader,
    refused_by_core,
    reject,
    signed_member_request,
)
from streams.inputs import BadInput, is_valid_id, require
from streams.metrics import counters
from streams.pushes import coupon_push
from streams.reports import stored_value_reconcile
from streams.state import EventMove
from streams.transactions import Commit, transact

log = logging.getLogger(__name__)

Context = Callable[[], Awaitable[dict[str, Any]]]


async def _nothing() -> dict[str, Any]:
    return {}


async def engage(view: View, op: str, member_id: str, op_id: str, body: bytes, *, record_id: str | None = None,
                 context: Context = _nothing, budgets: dict[str, int | None] | None = None,
                 then: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Response:
    """Runs one engagement operation to its end: 201 with the answer, 200 with the stored
    answer of a retry, 400 for a bad request, 409 when the rules or the state refuse it.
    `then` is given the answer of an operation applied now, once it is written."""
    if not is_valid_id(op_id):
        return await reject(view, 400, "Idempotency-Key header: letters, digits, _ - . : @, 1-64 chars", body,
                            field="Idempotency-Key")
    rt = await runtime.started()
    record_id = record_id or op_id
    budgets = budgets or {}

    async def decide(seq: int, state: str | None) -> Response | Commit[Response]:
        record = await rt.balances.event_record(member_id, record_id)
        if record:
            if record.kind != op:
                return error_response(view, 409, "Idempotency-Key already used for another operation",
                                      "Idempotency-Key")
            return view.bytes(record.result.encode(), content_type="application/json", status=200)
        ctx = await context()
        if budgets:
            ctx["spent"] = await rt.balances.budget_spent(list(budgets))
        try:
            (new_state, rows, result, points, sv_fen, amount, refund_of, consumed,
             publish) = core_ext.engage(rt.rules, op, state, op_id, body, orjson.dumps(ctx).decode(),
                                        int(time.time() * 1000))
        except (core_ext.InvalidEventError, core_ext.RejectedEventError) as exc:
            raise await refused_by_core(exc, body, "engagement_refused_total") from None

        async def done() -> Response:
            await _after(member_id, rows, publish)
            if then is not None:
                await then(orjson.loads(result))
            counters[f"engagement_{op}_total"] += 1
            log.info("%s %s of %s: %+d points, %+d fen stored value", op, op_id, member_id, points, sv_fen)
            return view.bytes(result.encode(), content_type="application/json", status=201)
        move = EventMove(record_id, op, points, rows, amount, refund_of, 0, result, sv_fen=sv_fen)
        # The wallet check comes when the new state needs it (a partner's answer overdue);
        # a stock that ran out meanwhile refuses the write, and the operation is decided again.
        return Commit(new_state, done, move, next_check_ms=core_ext.next_wallet_check_ms(rt.rules, new_state),
                      campaigns=dict(consumed), budgets=budgets)
    return await member_operation(view, member_id, decide)


async def _after(member_id: str, rows: str, publish: str | None) -> None:
    """Coupons a prize issued are pushed; a stored-value payment or refund goes to the
    accrual pipeline; a partner exchange request goes out through the webhook."""
    for row in orjson.loads(rows):
        if row.get("table") == "coupon_events" and row.get("kind") == "issued":
            fut = await notifications_topic.send(key=member_id.encode(), value=coupon_push(row), force=True)
            await fut
    if publish is not None:
        msg = orjson.loads(publish)
        topic = notifications_topic if msg.get("kind") == "partner_exchange" else payments_topic
        fut = await topic.send(key=member_id.encode(), value=publish.encode(), force=True)
        await fut


async def apply_as_system(op: str, member_id: str, op_id: str, body: bytes,
                          budgets: dict[str, int | None] | None = None) -> str:
    """An operation the engine applies itself (a timer's: an order expired, a seat given to
    the waitlist, an event closed), like the member's own: one atomic step with its rows,
    idempotent by `op_id`. Returns "done", "done before", or "<field>: <why not>"."""
    rt = await runtime.started()
    budgets = budgets or {}

    async def decide(seq: int, state: str | None) -> str | Commit[str]:
        if await rt.balances.event_record(member_id, op_id):
            return "done before"
        ctx = {"spent": await rt.balances.budget_spent(list(budgets))} if budgets else {}
        try:
            (new_state, rows, result, points, sv_fen, amount, refund_of, consumed,
             _publish) = core_ext.engage(rt.rules, op, state, op_id, body, orjson.dumps(ctx).decode(),
                                         int(time.time() * 1000))
        except (core_ext.InvalidEventError, core_ext.RejectedEventError) as exc:
            return f"{exc.field}: {exc}"

        async def done() -> str:
            return "done"
        move = EventMove(op_id, op, points, rows, amount, refund_of, 0, result, sv_fen=sv_fen)
        return Commit(new_state, done, move, campaigns=dict(consumed), budgets=budgets)
    return await transact(member_id, decide)


def with_path(body: bytes, field: str, value: str) -> bytes | None:
    """The body with the path's id in it (the core reads one request object), or None
    when the body names another one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body  # the core names what is wrong with it
    if not isinstance(obj, dict):
        return body
    if obj.get(field, value) != value:
        return None
    return orjson.dumps({**obj, field: value})


async def _signed(view: View, request: Request, field: str, value: str) -> tuple[bytes, str] | Response:
    got = await signed_member_request(request, value)
    body = with_path(got[0], field, value)
    if body is None:
        return await reject(view, 400, f"{field}: the body names another {field} than the path", got[0], field)
    return body, got[1]


@app.page("/v1/games/{game}/plays")
class GamePlays(View):
    """One play: the cost is taken, the draw made with a cryptographically secure
    generator (`secrets`), the prize's stock taken atomically (never below zero: the
    last unit goes to one player, the others get "thanks for playing"), the prize
    issued (points, a coupon or item voucher, a card) and the draw recorded for audit
    (ClickHouse `game_draws`: draw, odds, stock seen, outcome)."""

    async def post(self, request: Request, game: str) -> Response:
        got = await _signed(self, request, "game", game)
        if not isinstance(got, tuple):
            return got
        body, member_id = got
        rt = await runtime.started()
        budgets: dict[str, int | None] = dict(rt.rules.game_budgets(game))
        draw = secrets.randbelow(1_000_000)  # one draw per play, kept across retries of a conflict

        async def context() -> dict[str, Any]:
            return {"draw": draw}

        return await engage(self, "game_play", member_id, request.headers.get("Idempotency-Key", ""), body,
                            context=context, budgets=budgets)


@app.page("/v1/sign-in-plans/{plan}/sign-ins")
class PlanSignIns(View):
    """{"member_id"} signs in today (the reward escalates with the days kept in a row
    this cycle); {"member_id", "date"} makes up a missed day of the cycle for points;
    {"member_id", "stake"} stakes points on signing in every day of the next cycle
    (kept: stake + bonus back on the last day; a missed day loses it)."""

    async def post(self, request: Request, plan: str) -> Response:
        got = await _signed(self, request, "plan", plan)
        if not isinstance(got, tuple):
            return got
        body, member_id = got
        req = orjson.loads(body)
        op = "sign_in_makeup" if "date" in req else "sign_in_contract" if "stake" in req else "sign_in"
        return await engage(self, op, member_id, request.headers.get("Idempotency-Key", ""), body)


PERIODS = ("week", "month")


def _board(period: str, scope: str, at: dt.datetime, offset_minutes: int) -> str | None:
    """The board of a period and scope at a local time: w:2026-W48:all, m:2026-11:bu:x."""
    if period not in PERIODS or not (scope == "group" or is_valid_id(scope)):
        return None
    local = at.astimezone(dt.timezone(dt.timedelta(minutes=offset_minutes)))
    label = "w:{}-W{:02d}".format(*local.isocalendar()[:2]) if period == "week" else f"m:{local:%Y-%m}"
    return f"{label}:{'all' if scope == 'group' else 'bu:' + scope}"


def _defined(rules: core_ext.RuleSet, period: str, scope: str) -> bool:
    return (period, "group" if scope == "group" else "bu") in rules.leaderboards


def _mask(member_id: str) -> str:
    return member_id[:3] + "***" if len(member_id) > 3 else "***"


async def _member_reader(request: Request, member_id: str) -> Principal:
    """Who reads one member's data (the member's token, a POS key, admin), or Refused."""
    if not is_valid_id(member_id):
        raise Refused(400, "member_id: letters, digits, _ - . : @ only, 1-64 chars", "member_id")
    return await reader(request, member_id)


async def _any_reader(request: Request) -> Principal:
    """A reader of data of no one member (leaderboards): any credential, within its rate."""
    return await reader(request, None, members_too=True)


@app.page("/v1/leaderboards/{period}/{scope}")
class Leaderboard(View):
    """Points earned on payments this week or month (refunds take theirs back), group-wide
    or at one business unit: the top `limit` (default 10). Kept in Redis sorted sets that
    the accrual's atomic apply updates with the balance. Other members' ids are masked
    unless the admin token reads."""

    async def get(self, request: Request, period: str, scope: str) -> Response:
        who = await _any_reader(request)
        rt = await runtime.started()
        board = _board(period, scope, dt.datetime.now(dt.UTC), rt.rules.utc_offset_minutes)
        try:
            limit = int(request.query.get("limit", "10"))
            require(1 <= limit <= 100 and board is not None)
        except (ValueError, BadInput):
            board = None
        if board is None:
            return error_response(self, 400, "period: week|month; scope: group or a business unit id; "
                                  "limit: 1-100", "query")
        if not _defined(rt.rules, period, scope):
            return error_response(self, 404, f"no {period} leaderboard for {scope} in the rules ([[leaderboards]])",
                                  "period")
        top = await rt.balances.board_top(board, limit)
        show = (lambda m: m) if who.kind in ("admin", "pos") else (lambda m: m if who.may_read(m) else _mask(m))
        return json_response(self, {"board": board, "period": period, "scope": scope, "top": [
            {"rank": i + 1, "member": show(m), "points": p} for i, (m, p) in enumerate(top)]})


@app.page("/v1/members/{member_id}/rank")
class MemberRank(View):
    async def get(self, request: Request, member_id: str) -> Response:
        await _member_reader(request, member_id)
        rt = await runtime.started()
        period, scope = request.query.get("period", "week"), request.query.get("scope", "group")
        board = _board(period, scope, dt.datetime.now(dt.UTC), rt.rules.utc_offset_minutes)
        if board is None:
            return error_response(self, 400, "period: week|month; scope: group or a business unit id", "query")
        if not _defined(rt.rules, period, scope):
            return error_response(self, 404, f"no {period} leaderboard for {scope} in the rules ([[leaderboards]])",
                                  "period")
        rank, points, size = await rt.balances.board_rank(board, await account_of(member_id))
        return json_response(self, {"member_id": member_id, "board": board, "rank": rank, "points": points,
                                    "members_ranked": size})


@app.page("/v1/exchanges")
class Exchanges(View):
    """{"member_id", "partner", "points"}: points out to a partner at its rate (a multiple
    of its points per unit), within the daily limit. The points are taken at once and the
    exchange is pending; the request goes to the partner through the outbound webhook
    (push id = the Idempotency-Key, so the partner sees one request however often it is
    re-sent); the partner's confirmation settles it, a failure gives the points back."""

    async def post(self, request: Request) -> Response:
        got = await signed_member_request(request)
        body, member_id = got
        return await engage(self, "exchange_out", member_id, request.headers.get("Idempotency-Key", ""), body)


def _partner_body(body: bytes, partner: str) -> tuple[bytes | None, str | None]:
    body2 = with_path(body, "partner", partner)
    try:
        member_id = orjson.loads(body).get("member_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return body2, member_id if isinstance(member_id, str) and is_valid_id(member_id) else None


@app.page("/v1/partners/{partner}/confirmations")
class PartnerConfirmations(View):
    """The partner's answer to an exchange: {"member_id", "exchange_id", "status":
    "confirmed" | "failed"} (signed like a gateway callback). Idempotent per exchange."""

    async def post(self, request: Request, partner: str) -> Response:
        body = await read_signed(request, "callback")
        try:
            req = orjson.loads(body)
            member_id, xid = req["member_id"], req["exchange_id"]
            require(isinstance(member_id, str) and isinstance(xid, str) and is_valid_id(member_id))
            require(is_valid_id(xid) and is_valid_id(partner))
        except (orjson.JSONDecodeError, KeyError, TypeError, BadInput):
            return await reject(self, 400, 'body: {"member_id", "exchange_id", "status"}', body, "body")
        rt = await runtime.started()
        original = await rt.balances.event_record(member_id, xid)
        if original is None or original.kind != "exchange_out" or original.json().get("partner") != partner:
            return error_response(self, 404, f"no exchange {xid} of member {member_id} with {partner}", "exchange_id")
        return await engage(self, "exchange_settle", member_id, settle_id(xid), body)


def settle_id(exchange_id: str) -> str:
    """The id of a partner's answer to an exchange: `<exchange>:settle`, or for an exchange
    id too long to take the suffix (ids are at most 64 characters), a digest of it."""
    named = f"{exchange_id}:settle"
    return named if len(named) <= 64 else "settle:" + hashlib.sha256(exchange_id.encode()).hexdigest()[:48]


@app.page("/v1/partners/{partner}/credits")
class PartnerCredits(View):
    """Points in from a partner: {"member_id", "units"} at its rate, within the daily
    limit, signed like a gateway callback; the Idempotency-Key is the partner's transfer id."""

    async def post(self, request: Request, partner: str) -> Response:
        body = await read_signed(request, "callback")
        merged, member_id = _partner_body(body, partner)
        if merged is None or member_id is None:
            return await reject(self, 400, 'body: {"member_id", "units"} (and the partner of the path)', body, "body")
        return await engage(self, "exchange_in", member_id, request.headers.get("Idempotency-Key", ""), merged)


@app.page("/v1/stored-value/{operation}")
class StoredValue(View):
    """Prepaid money in fen, kept apart from points (`sv_balance` of the member in Redis,
    `stored_value` in ClickHouse). topups: {"member_id", "amount_fen", "channel"};
    payments: {"member_id", "amount_fen", "bu_id", "merchant_id", "category"}, the
    Idempotency-Key is the payment id: the payment then goes through the accrual pipeline
    on channel `stored_value` (earning at that channel's rate); refunds: {"member_id",
    "payment_id", "amount_fen"}, back to the stored value, and the refund through accrual."""

    async def post(self, request: Request, operation: str) -> Response:
        op = {"topups": "sv_topup", "payments": "sv_pay", "refunds": "sv_refund"}.get(operation)
        if op is None:
            return error_response(self, 404, "stored-value operations: topups, payments, refunds")
        got = await signed_member_request(request)
        body, member_id = got
        key = request.headers.get("Idempotency-Key", "")
        rt = await runtime.started()

        async def context() -> dict[str, Any]:
            payment_id = orjson.loads(body).get("payment_id")
            if op != "sv_refund" or not isinstance(payment_id, str) or not is_valid_id(payment_id):
                return {}
            record = await rt.balances.event_record(member_id, f"sv:{payment_id}")
            if record is None or record.kind != "sv_pay":
                return {}
            paid = record.json()
            return {"original": {"amount_fen": record.amount, "refunded_fen": record.refunded_amount,
                                 "bu_id": paid["bu_id"], "merchant_id": paid["merchant_id"],
                                 "category": paid["category"]}}

        response = await engage(self, op, member_id, key, body, record_id=f"sv:{key}", context=context)
        if response.status == 200 and op in ("sv_pay", "sv_refund"):
            # A retry: the payment event may not have reached Kafka before a crash; the
            # accrual takes it once whatever happens (idempotent by event id).
            await _resend_payment(member_id, key)
        return response


async def _resend_payment(member_id: str, key: str) -> None:
    """Sends the stored-value operation's payment or refund event again (as answered)."""
    rt = await runtime.started()
    record = await rt.balances.event_record(member_id, f"sv:{key}")
    event = record.json().get("event") if record is not None else None
    if event:
        fut = await payments_topic.send(key=member_id.encode(), value=orjson.dumps(event), force=True)
        await fut


@app.page("/v1/members/{member_id}/engagement")
class MemberEngagement(View):
    async def get(self, request: Request, member_id: str) -> Response:
        await _member_reader(request, member_id)
        rt = await runtime.started()
        data = await rt.balances.member(await account_of(member_id)) or {}
        view = core_ext.engagement_view(rt.rules, data.get("state"), int(time.time() * 1000))
        return self.bytes(b'{"member_id":' + orjson.dumps(member_id) + b',"stored_value_balance_fen":'
                          + str(int(data.get("sv_balance", 0))).encode() + b',"engagement":' + view.encode() + b"}",
                          content_type="application/json")


@app.page("/v1/admin/stored-value/reconcile")
class StoredValueReconcile(View):
    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        return json_response(self, await stored_value_reconcile())


@app.page("/v1/admin/games/{game}/draws")
class GameDraws(View):
    """The audit of a game from ClickHouse: its draws (newest first; `member`, `limit`,
    `offset`) and the count of plays by outcome and prize."""

    async def get(self, request: Request, game: str) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        q = request.query
        try:
            limit, offset = int(q.get("limit", "100")), int(q.get("offset", "0"))
            member = q.get("member", "")
            require(1 <= limit <= 10_000 and offset >= 0 and is_valid_id(game) and (not member or is_valid_id(member)))
        except (ValueError, BadInput):
            return error_response(self, 400, "game and member: ids; limit: 1-10000; offset: >= 0", "query")
        rt = await runtime.started()
        draws = await rt.ledger.query("game_draws", {"game": game, "member": member, "limit": limit,
                                                     "offset": offset})
        for d in draws:
            d["odds"] = orjson.loads(d["odds"])
        outcomes = await rt.ledger.query("game_outcomes", {"game": game})
        return json_response(self, {"game": game, "outcomes": outcomes, "draws": draws})


@app.page("/v1/admin/settlement/events/{event_id}")
class EventSettlement(View):
    """The settlement lines of one event, from ClickHouse."""

    async def get(self, request: Request, event_id: str) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        if not is_valid_id(event_id):
            return error_response(self, 400, "event_id: letters, digits, _ - . : @ only, 1-64 chars", "event_id")
        rt = await runtime.started()
        return json_response(self, {"event_id": event_id,
                                    "lines": await rt.ledger.query("settlement_of_event", {"event_id": event_id})})


@app.page("/v1/members/{member_id}/stored-value")
class MemberStoredValue(View):
    """The member's stored-value balance (Redis) and ledger (ClickHouse)."""

    async def get(self, request: Request, member_id: str) -> Response:
        await _member_reader(request, member_id)
        rt = await runtime.started()
        account = await account_of(member_id)  # a merged account's: the account kept's
        data = await rt.balances.member(account) or {}
        rows = await rt.ledger.query("stored_value_of_member", {"member_id": account})
        return json_response(self, {"member_id": member_id, "balance_fen": int(data.get("sv_balance", 0)),
                                    "rows": rows})
