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

import asyncio
import datetime as dt
import hmac
import logging
import time
import uuid
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

import core_ext
from streams import metrics
from streams.app import app, member_events_topic, payments_topic, runtime, send_dead_letter
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


async def _read_signed(view: View, request: Request) -> tuple[bytes | None, Response | None]:
    """The body of a signed callback, or the response that refuses it."""
    settings = runtime.settings
    too_large = f"body larger than {settings.max_body_bytes} bytes"
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        # Not read at all: the dead letter keeps the reason, not the body.
        return None, await _reject(view, 413, too_large, b"", field="body")
    body = await request.read()
    if len(body) > settings.max_body_bytes:
        return None, await _reject(view, 413, too_large, body[: settings.max_body_bytes], field="body")
    if not settings.callback_secret:
        return None, error_response(view, 503, "callbacks disabled: LOYALTY_CALLBACK_SECRET is not set")
    try:
        verify(settings.callback_secret, request.headers.get("X-Timestamp"),
               request.headers.get("X-Signature"), body, settings.signature_max_age_s)
    except SignatureError as exc:
        return None, await _reject(view, 401, str(exc), body, field="X-Signature")
    return body, None


async def _publish(view: View, topic: object, key: str, body: bytes, event_id: str) -> Response:
    try:
        fut = await topic.send(key=key.encode(), value=body, force=True)  # type: ignore[attr-defined]
        await fut  # acks=all: the broker has it before we say so
    except KafkaError as exc:
        counters["callbacks_unavailable_total"] += 1
        log.error("kafka did not take callback %s: %r", event_id, exc)
        return json_response(view, {"error": "temporarily unavailable, retry"}, 503, headers={"Retry-After": "1"})
    counters["callbacks_accepted_total"] += 1
    return json_response(view, {"event_id": event_id, "status": "accepted"}, 202)


@app.page("/v1/callbacks/payment")
class PaymentCallback(View):
    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request)
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        try:
            event_id, member_id, _kind, payer = core_ext.validate_payment(body)
        except core_ext.InvalidEventError as exc:
            return await _reject(self, 400, str(exc), body, field=exc.field)
        if member_id is None and payer is not None:
            # Resolve the payer here, so the event is keyed (and ordered) by member.
            rt = await runtime.started()
            member_id = await rt.balances.resolve(*payer)
            if member_id is not None:
                body = orjson.dumps({**orjson.loads(body), "member_id": member_id})
            else:
                counters["callbacks_guest_total"] += 1
                return await _publish(self, payments_topic, f"guest:{payer[0]}:{payer[1]}", body, event_id)
        assert member_id is not None
        return await _publish(self, payments_topic, member_id, body, event_id)


@app.page("/v1/callbacks/member")
class MemberCallback(View):
    async def post(self, request: Request) -> Response:
        body, refused = await _read_signed(self, request)
        if refused is not None or body is None:
            return refused  # type: ignore[return-value]
        try:
            event_id, member_id, kind = core_ext.validate_member_event(body)
        except core_ext.InvalidEventError as exc:
            return await _reject(self, 400, str(exc), body, field=exc.field)
        if kind in ("tier_override", "tier_review"):
            return await _reject(self, 400, f"type: {kind} is for operators (admin API)", body, field="type")
        return await _publish(self, member_events_topic, member_id, body, event_id)


@app.page("/v1/members/{member_id}")
class MemberView(View):
    async def get(self, request: Request, member_id: str) -> Response:
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: letters, digits, _ - . : @ only, 1-64 chars",
                                  "member_id")
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


async def _wait_applied(member_id: str, event_id: str, timeout_s: float) -> bool:
    rt = await runtime.started()
    key = rt.balances.event_key(member_id, event_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await rt.balances.redis.exists(key):
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
            body = orjson.loads(await request.read())
            text, start, end = body["rules"], body["from"], body["to"]
            start_dt = dt.datetime.fromisoformat(start).astimezone(dt.UTC)
            end_dt = dt.datetime.fromisoformat(end).astimezone(dt.UTC)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return error_response(self, 400, f'body must be {{"rules": toml, "from": iso, "to": iso}}: {exc}')
        try:
            candidate = core_ext.RuleSet.from_toml(text, body.get("path", "candidate.toml"))
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
        return json_response(self, {"version": rules.version})


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
