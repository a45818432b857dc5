"""Coupon redemptions from the console (docs/back-office.md): merchant staff redeem a
member's coupon at their own merchant (核销 without a till integration) and list the
redemptions made at it. The redemption is the till's (streams/http/members.py
`redeem_coupon_now`): the same checks of owner, validity, threshold, scope and single use,
atomic with the member's state; the merchant, its business unit and category come from the
operator's scope and the rules in force, never from the request of merchant staff.

POST /v1/admin/coupons/redeem        {"member_id", "coupon_id", "payment_id", "amount_fen",
                                      "merchant_id" (not for merchant staff)}: 201 redeemed
GET  /v1/admin/coupons/redemptions   ?merchant=&from=&to=: the redemptions at a merchant
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from faust.web import Request, Response, View

from streams.app import app, runtime
from streams.http.common import Refused, error_response, json_response, web_request
from streams.http.console import json_body, operator_of, statement_in_scope
from streams.http.members import redeem_coupon_now
from streams.inputs import BadInput, date_in, is_valid_id
from streams.rules_scope import merchants_of


def _merchant(merchant_id: str) -> dict[str, Any]:
    """The merchant as the rules in force define it (its BU and category), or Refused."""
    current = runtime.rules_published
    found = next((m for m in merchants_of(current.text) if m["id"] == merchant_id), None) if current else None
    if found is None:
        raise Refused(409, f"merchant {merchant_id} is not in the rules in force: a group admin adds it "
                      "(Merchants)", "merchant_id")
    return found


@app.page("/v1/admin/coupons/redeem")
class ConsoleRedemption(View):
    async def post(self, request: Request) -> Response:
        body = await json_body(request)
        op = operator_of(request)
        merchant_id = op.merchant if op.role == "merchant_staff" else body.get("merchant_id")
        if op.role == "merchant_staff" and body.get("merchant_id") not in (None, op.merchant):
            return error_response(self, 403, f"redemptions at {op.merchant} only", "merchant_id")
        member_id, coupon_id, payment_id = body.get("member_id"), body.get("coupon_id"), body.get("payment_id")
        amount = body.get("amount_fen")
        for name, v in (("member_id", member_id), ("coupon_id", coupon_id), ("payment_id", payment_id),
                        ("merchant_id", merchant_id)):
            if not isinstance(v, str) or not is_valid_id(v):
                return error_response(self, 400, f"{name}: an id", name)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 100_000_000:
            return error_response(self, 400, "amount_fen: the payment's amount in fen, 1-100000000", "amount_fen")
        merchant = _merchant(str(merchant_id))
        await statement_in_scope(request, merchant["bu"], merchant["id"])
        till = orjson.dumps({
            "member_id": member_id, "coupon_id": coupon_id, "payment_id": payment_id, "bu_id": merchant["bu"],
            "merchant_id": merchant["id"], "category": merchant["category"], "amount_fen": amount,
            "occurred_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")})

        def audited(answer: dict[str, Any]) -> None:
            web_request(request)["audit"] = {
                "action": "coupon.redeem", "member_id": member_id, "target": coupon_id,
                "before": {"status": "active"},
                "after": {k: answer.get(k) for k in ("payment_id", "discount_fen", "merchant_id")}}
        return await redeem_coupon_now(self, till, str(member_id), audited)


@app.page("/v1/admin/coupons/redemptions")
class ConsoleRedemptions(View):
    async def get(self, request: Request) -> Response:
        op = operator_of(request)
        q = request.query
        merchant_id = q.get("merchant", op.merchant if op.role == "merchant_staff" else "")
        if not is_valid_id(merchant_id):
            return error_response(self, 400, "merchant: a merchant id", "merchant")
        try:
            start = date_in(q.get("from", "1970-01-02"), "from")
            end = date_in(q.get("to", "2198-12-31"), "to") + dt.timedelta(days=1)
        except BadInput as exc:
            return error_response(self, 400, str(exc), exc.field)
        merchant = _merchant(merchant_id)
        await statement_in_scope(request, merchant["bu"], merchant["id"])
        rt = await runtime.started()
        rows = await rt.ledger.query("coupon_redemptions", {
            "merchant": merchant_id, "start": dt.datetime.combine(start, dt.time(), dt.UTC),
            "end": dt.datetime.combine(end, dt.time(), dt.UTC)})
        return json_response(self, {"merchant": merchant_id, "redemptions": rows,
                                    "discount_fen": sum(int(r["discount_fen"]) for r in rows),
                                    "merchant_share_fen": sum(int(r["merchant_share_fen"]) for r in rows)})
