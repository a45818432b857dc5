"""The points mall (积分商城, docs/points-mall.md): the catalogue as a member sees it,
exchanging points for an item (its stock taken atomically with the member's write, so a
flash sale sells exactly what it has, at most one each), the member's orders, and the
orders' life at the counter (ready, shipped, collected, cancelled) and their expiry when not
collected (the leader's timer: the points into their very lots, the unit back in stock).

GET  /v1/mall/items?member_id=                 the catalogue, `can_buy` / `why_not` per item
POST /v1/mall/items/{item}/exchange            {"member_id"} + Idempotency-Key (signed POS)
GET  /v1/members/{member_id}/orders            the member's orders, newest first
POST /v1/mall/orders/{order_id}/{action}       {"member_id"} + Idempotency-Key (signed POS):
                                               ready | ship | collect | cancel

An item with a cash part (积分换购) makes an order `awaiting_payment` until a payment naming
it (`mall_order` on the payment callback, or in a gateway order's attach) pays the cash;
unpaid after the item's `pay_minutes` it expires like an uncollected one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, leader_timer, runtime
from streams.http.common import (
    catalogue_reader,
    error_response,
    json_response,
    member_state_part,
    signed_member_request,
)
from streams.http.engage import apply_as_system, engage, with_path
from streams.metrics import counters
from streams.recovery import OPEN_ORDERS
from streams.transactions import MemberBusy

log = logging.getLogger(__name__)

ACTIONS = ("ready", "ship", "collect", "cancel")


async def _index_order(member_id: str, answer: dict[str, Any]) -> None:
    """An order to collect, or whose cash part is awaited, is indexed by its deadline (the
    expiry timer's)."""
    deadline = answer.get("collect_by_ms") or answer.get("pay_by_ms")
    if deadline:
        rt = await runtime.started()
        await rt.balances.index_mall_order(member_id, answer["order_id"], int(deadline))


async def _unindex_order(member_id: str, answer: dict[str, Any]) -> None:
    if answer.get("status") in ("collected", "cancelled", "expired"):
        rt = await runtime.started()
        await rt.balances.unindex_mall_order(member_id, answer["order_id"])


@app.page("/v1/mall/items")
class MallItems(View):
    async def get(self, request: Request) -> Response:
        member_id, state = await catalogue_reader(request)
        rt = await runtime.started()
        spent = await rt.balances.budget_spent([b for b, _ in rt.rules.budgets if b.startswith("mall:")])
        items = core_ext.mall_catalogue(rt.rules, state, spent, int(time.time() * 1000))
        return json_response(self, {"member_id": member_id or None, "items": items})


@app.page("/v1/mall/items/{item}/exchange")
class MallExchange(View):
    async def post(self, request: Request, item: str) -> Response:
        body, member_id = await signed_member_request(request, item)
        with_item = with_path(body, "item", item)
        if with_item is None:
            return error_response(self, 400, "item: the body names another item than the path", "item")
        rt = await runtime.started()
        budgets: dict[str, int | None] = dict(rt.rules.mall_budgets(item))

        async def then(answer: dict[str, Any]) -> None:
            await _index_order(member_id, answer)
        return await engage(self, "mall_exchange", member_id, request.headers.get("Idempotency-Key", ""), with_item,
                            budgets=budgets, then=then)


@app.page("/v1/members/{member_id}/orders")
class MemberOrders(View):
    async def get(self, request: Request, member_id: str) -> Response:
        _account, orders = await member_state_part(request, member_id, "orders")
        rows = [{"order_id": k, **{f: v for f, v in o.items() if f != "lots"}} for k, o in orders.items()]
        rows.sort(key=lambda o: o.get("placed_at_ms", 0), reverse=True)
        return json_response(self, {"member_id": member_id, "orders": rows})


@app.page("/v1/mall/orders/{order_id}/{action}")
class MallOrderAction(View):
    async def post(self, request: Request, order_id: str, action: str) -> Response:
        if action not in ACTIONS:
            return error_response(self, 404, f"action: one of {', '.join(ACTIONS)}", "action")
        body, member_id = await signed_member_request(request, order_id)
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict) or set(req) - {"member_id"}:
            return error_response(self, 400, 'body: {"member_id"}', "body")
        op_body = orjson.dumps({"member_id": member_id, "order_id": order_id, "action": action})

        async def then(answer: dict[str, Any]) -> None:
            await _unindex_order(member_id, answer)
        return await engage(self, "mall_order", member_id, request.headers.get("Idempotency-Key", ""), op_body,
                            then=then)


def _deadline(state: str | None, order_id: str) -> int | None:
    """The order's deadline now when it is still open (a paid cash part moved it)."""
    order = ((orjson.loads(state).get("orders") or {}) if state else {}).get(order_id)
    if order and order.get("status") in OPEN_ORDERS:
        return int(order.get("collect_by_ms") or 0) or None
    return None


async def expire_order(member_id: str, order_id: str) -> str:
    """An order not collected (or its cash part not paid) by its deadline expires: the
    points back into their lots and the unit back in stock, through the member's atomic
    step. An order whose deadline moved (its cash part paid since) is indexed again at the
    new one. Returns the outcome."""
    rt = await runtime.started()
    body = orjson.dumps({"member_id": member_id, "order_id": order_id, "action": "expire"})
    outcome = await apply_as_system("mall_order", member_id, f"expire-{order_id}"[:64], body)
    if outcome == "done":
        counters["mall_orders_expired_total"] += 1
        return "expired"
    if outcome.startswith("action:"):
        _seq, state, _balance = await rt.balances.member_state(member_id)
        later = _deadline(state, order_id)
        if later and later > int(time.time() * 1000):
            await rt.balances.index_mall_order(member_id, order_id, later)
            return f"not due yet: due at {later}"
    return f"not expired: {outcome}"


@leader_timer(30.0)
async def expire_mall_orders() -> None:
    """Orders past their collection deadline, expired (a few hundred a round)."""
    try:
        rt = await runtime.started()
        for member_id, order_id in await rt.balances.mall_orders_due(int(time.time() * 1000), 500):
            try:
                outcome = await expire_order(member_id, order_id)
            except MemberBusy:
                continue  # the next round tries again
            log.info("points-mall order %s of %s: %s", order_id, member_id, outcome)
            if not outcome.startswith("not due yet"):
                await rt.balances.unindex_mall_order(member_id, order_id)
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("expiring points-mall orders failed; the next round tries again")
