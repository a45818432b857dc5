"""The HTTP service, on the Faust worker's web server: callbacks, member API, admin.

POST /v1/callbacks/payment          signed gateway callback -> 202 after Kafka acks
GET  /v1/members/{member_id}        balance and tier from Redis
GET  /v1/admin/ledger/totals        ledger totals from ClickHouse      (admin token)
GET  /v1/admin/reconcile            Redis balances vs ledger sums      (admin token)
POST /v1/admin/members/{id}/tier    operator sets a member's tier      (admin token)
POST /v1/admin/rules/reload         reload the rules file              (admin token)
GET  /healthz, GET /metrics
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

import core_ext
from streams import metrics
from streams.app import app, payments_topic, runtime, send_dead_letter
from streams.metrics import counters
from streams.records import is_valid_id
from streams.signing import SignatureError, verify

log = logging.getLogger(__name__)


def json_response(view: View, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


def error_response(view: View, status: int, error: str, field: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return json_response(view, body, status)


async def _reject(view: View, status: int, reason: str, body: bytes, field: str | None = None) -> Response:
    counters["callbacks_rejected_total"] += 1
    try:
        await send_dead_letter(source="ingress", reason=reason, field=field, body=body)
    except KafkaError:
        # The caller still gets its 4xx; the body is in our log instead.
        log.exception("could not dead-letter a rejected callback (%s): %r", reason, body[:2000])
    return error_response(view, status, reason, field)


@app.page("/v1/callbacks/payment")
class PaymentCallback(View):
    async def post(self, request: Request) -> Response:
        settings = runtime.settings
        too_large = f"body larger than {settings.max_body_bytes} bytes"
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            # Not read at all: the dead letter keeps the reason, not the body.
            return await _reject(self, 413, too_large, b"", field="body")
        body = await request.read()
        if len(body) > settings.max_body_bytes:
            return await _reject(self, 413, too_large, body[: settings.max_body_bytes], field="body")
        if not settings.callback_secret:
            return error_response(self, 503, "callbacks disabled: LOYALTY_CALLBACK_SECRET is not set")
        try:
            verify(
                settings.callback_secret,
                request.headers.get("X-Timestamp"),
                request.headers.get("X-Signature"),
                body,
                settings.signature_max_age_s,
            )
        except SignatureError as exc:
            return await _reject(self, 401, str(exc), body, field="X-Signature")
        try:
            event_id, member_id, _kind = core_ext.validate_payment(body)
        except core_ext.InvalidEventError as exc:
            return await _reject(self, 400, str(exc), body, field=exc.field)
        try:
            fut = await payments_topic.send(key=member_id.encode(), value=body, force=True)
            await fut  # acks=all: the broker has it before we say so
        except KafkaError as exc:
            counters["callbacks_unavailable_total"] += 1
            log.error("kafka did not take callback %s: %r", event_id, exc)
            return json_response(self, {"error": "temporarily unavailable, retry"}, 503, headers={"Retry-After": "1"})
        counters["callbacks_accepted_total"] += 1
        return json_response(self, {"event_id": event_id, "status": "accepted"}, 202)


@app.page("/v1/members/{member_id}")
class MemberView(View):
    async def get(self, request: Request, member_id: str) -> Response:
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: letters, digits, _ - . : @ only, 1-64 chars", "member_id")
        rt = await runtime.started()
        data = await rt.balances.member(member_id)
        if data is None:
            return error_response(self, 404, f"member {member_id} has no points activity", "member_id")
        return json_response(
            self,
            {
                "member_id": member_id,
                "balance": int(data.get("balance", 0)),
                "tier": data.get("tier") or rt.rules.default_tier,
                "earned": int(data.get("earned", 0)),
                "clawed_back": int(data.get("clawed_back", 0)),
                "events": int(data.get("events", 0)),
            },
        )


def admin_denied(view: View, request: Request) -> Response | None:
    token = runtime.settings.admin_token
    if not token:
        return error_response(view, 503, "admin API disabled: LOYALTY_ADMIN_TOKEN is not set")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(view, 401, "admin token missing or wrong")
    return None


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
    redis_balances = await rt.balances.balances()
    ledger = {r["member_id"]: int(r["points"]) for r in await rt.ledger.query("ledger_balances")}
    mismatches = [
        {"member_id": m, "redis": redis_balances.get(m, 0), "ledger": ledger.get(m, 0)}
        for m in sorted(set(redis_balances) | set(ledger))
        if redis_balances.get(m, 0) != ledger.get(m, 0)
    ]
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


@app.page("/v1/admin/members/{member_id}/tier")
class MemberTier(View):
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
            return error_response(self, 400, 'body must be {"tier": "<tier id>"}', "tier")
        if tier not in rt.rules.tier_ids:
            return error_response(self, 400, f"unknown tier {tier!r}; tiers: {rt.rules.tier_ids}", "tier")
        await rt.balances.set_tier(member_id, tier)
        log.info("operator set tier of %s to %s", member_id, tier)
        return json_response(self, {"member_id": member_id, "tier": tier})


@app.page("/v1/admin/rules/reload")
class RulesReload(View):
    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        try:
            rules = runtime.reload_rules()
        except core_ext.RulesError as exc:
            return error_response(self, 400, str(exc), exc.field, line=exc.line, file=exc.file)
        return json_response(self, {"version": rules.version})


@app.page("/healthz")
class Health(View):
    async def get(self, request: Request) -> Response:
        rt = await runtime.started()
        await rt.balances.redis.ping()
        return json_response(self, {"status": "ok", "rules_version": rt.rules.version})


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(metrics.render().encode(), content_type="text/plain")
