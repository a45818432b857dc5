"""The operators' API (admin token) and the service's own pages.

GET  /v1/admin/ledger/totals, /v1/admin/coupons/totals   totals from ClickHouse
GET  /v1/admin/kpis, /dashboard, /v1/admin/liability     BI (docs/bi.md)
POST /v1/admin/segments/refresh                          RFM segments and tags now
GET  /v1/admin/reconcile, /v1/admin/held                 Redis vs the ledger; refunds held
POST /v1/admin/reconcile/repair                          members behind the ledger rebuilt from it
POST /v1/admin/backup                                    a backup of the ClickHouse store
GET  /v1/admin/settlement/statement                      a day's net positions
POST /v1/admin/rebuild                                   Redis state from the ledger, by page
POST /v1/admin/members/{id}/tier, .../adjustments        tier override; points adjustment
POST /v1/admin/rules/simulate, /v1/admin/rules/reload    candidate rules; reload
GET  /healthz, /metrics
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams import bi, metrics, segments
from streams.app import (
    app,
    leader_timer,
    member_events_topic,
    record_binding,
    runtime,
)
from streams.gateways.mapping import GatewayConfigError
from streams.http.common import admin_denied, error_response, json_response, read_body, web_request
from streams.http.console import member_in_scope, operator_of, statement_in_scope
from streams.inputs import BadInput, date_in, instant_in, is_valid_id, json_object, require
from streams.reports import held_refunds, reconcile, settlement_statement

log = logging.getLogger(__name__)


@app.page("/v1/admin/coupons/totals")
class CouponTotals(View):
    """Coupon events in ClickHouse by kind and template (issued, redeemed, pushed...)."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        rt = await runtime.started()
        return json_response(self, {"rows": await rt.ledger.query("coupon_totals")})


DASHBOARD = Path(__file__).resolve().parent.parent / "static" / "dashboard.html"


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

    @leader_timer(runtime.settings.segments_interval_s)
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


@app.page("/v1/admin/reconcile")
class Reconcile(View):
    """Redis balances against the ledger; with `?kinds=1` also every kind of fact against its
    durable copy (streams/reports.py: reconcile_kinds)."""

    async def get(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        result = await reconcile()
        if request.query.get("kinds") in ("1", "true"):
            from streams.reports import reconcile_kinds

            result["by_kind"] = await reconcile_kinds()
        return json_response(self, result)


@app.page("/v1/admin/reconcile/repair")
class ReconcileRepair(View):
    """Members whose Redis state is behind the ledger (Redis lost its last writes) rebuilt
    from it (streams/recovery.py: repair)."""

    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        from streams.recovery import repair

        return json_response(self, await repair())


@app.page("/v1/admin/backup")
class Backup(View):
    """A backup of the ClickHouse store (streams/sinks/backup.py) under LOYALTY_BACKUP_DIR,
    written by the worker that holds the store."""

    async def post(self, request: Request) -> Response:
        if (denied := admin_denied(self, request)) is not None:
            return denied
        from streams.sinks.backup import NAME, backup_sync

        try:
            name = orjson.loads(await request.read() or b"{}").get("name", "")
            require(isinstance(name, str) and bool(NAME.fullmatch(name)))
        except (orjson.JSONDecodeError, AttributeError, BadInput):
            return error_response(self, 400, 'body: {"name": 1-64 letters, digits, _ . -}', "name")
        rt = await runtime.started()
        into = rt.settings.backup_dir / name
        try:
            manifest = await rt.ledger.in_thread(backup_sync, rt.ledger, into)
        except FileExistsError as exc:
            return error_response(self, 409, str(exc), "name")
        return json_response(self, {"path": str(into), **manifest})


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
        await statement_in_scope(request, bu, merchant)
        return json_response(self, await settlement_statement(day, bu, merchant))


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
        await member_in_scope(request, member_id)
        _seq, state, _balance = await rt.balances.member_state(member_id)
        tier_before = core_ext.member_view(rt.rules, state, int(now.timestamp() * 1000)).get("tier")
        fut = await member_events_topic.send(key=member_id.encode(), value=event, force=True)
        await fut
        applied = await _wait_applied(member_id, event_id, timeout_s=10.0)
        log.info("operator override of %s to %s until %s (%s)", member_id, tier, until,
                 "applied" if applied else "queued")
        web_request(request)["audit"] = {
            "action": "member.tier-override", "member_id": member_id, "target": event_id,
            "before": {"tier": tier_before}, "after": {"tier": tier, "until": until}}
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
        body = await read_body(request, None)
        if not is_valid_id(member_id):
            return error_response(self, 400, "member_id: invalid", "member_id")
        try:
            req = json_object(body)
            adjustment_id = req["adjustment_id"]
            require(isinstance(adjustment_id, str) and is_valid_id(adjustment_id) and len(adjustment_id) <= 48)
        except (orjson.JSONDecodeError, KeyError, TypeError, BadInput):
            return error_response(self, 400, 'body: {"adjustment_id": "<id, 1-48 chars>", "points": <±int>, '
                                  '"reason": "<3-200 chars>"}', "adjustment_id")
        points, reason = req.get("points"), req.get("reason")
        try:
            core_ext.validate_member_event(adjustment_event(member_id, adjustment_id, points, reason))
        except core_ext.InvalidEventError as exc:
            return error_response(self, 400, str(exc), exc.field)
        await member_in_scope(request, member_id)
        op = operator_of(request)
        rt = await runtime.started()
        points = int(points)  # type: ignore[arg-type]  # validated by the core
        if op.role != "automation" and abs(points) > rt.settings.approval_points:
            # Maker / checker: above the threshold a second operator approves (console.py).
            pending = await rt.balances.add_approval({
                "approval_id": adjustment_id, "member_id": member_id, "points": points, "reason": reason,
                "status": "pending", "requested_by": op.login, "bu": op.bu,
                "requested_at_ms": int(time.time() * 1000)})
            await record_binding("approval", f"approval:{adjustment_id}", member_id, orjson.dumps(pending).decode())
            web_request(request)["audit"] = {
                "action": "member.adjust.requested", "member_id": member_id,
                "target": adjustment_id, "before": None, "after": pending}
            return json_response(self, {**pending, "applied": False}, 202 if pending["status"] == "pending" else 200)
        if points < 0 and not await rt.balances.event_record(member_id, f"adj:{adjustment_id}"):
            available = await available_points(member_id)
            if available < -points:
                return error_response(self, 409, f"the member has {available} points available, the adjustment "
                                      f"takes {-points}", "points", available=available)
        applied, before, after = await send_adjustment(member_id, adjustment_id, points, str(reason))
        web_request(request)["audit"] = {
            "action": "member.adjust", "member_id": member_id, "target": adjustment_id,
            "before": {"available": before}, "after": {"available": after, "points": points,
                                                        "reason": reason}}
        return json_response(self, {"member_id": member_id, "adjustment_id": adjustment_id, "points": points,
                                    "applied": applied}, 201 if applied else 202)


def adjustment_event(member_id: str, adjustment_id: str, points: object, reason: object) -> bytes:
    return orjson.dumps({"event_id": f"adj:{adjustment_id}", "type": "adjustment", "member_id": member_id,
                         "occurred_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                         "points": points, "reason": reason})


async def available_points(member_id: str) -> int:
    rt = await runtime.started()
    _seq, state, _balance = await rt.balances.member_state(member_id)
    return int(core_ext.member_view(rt.rules, state, int(time.time() * 1000))["available"])


async def send_adjustment(member_id: str, adjustment_id: str, points: int, reason: str) -> tuple[bool, int, int]:
    """The adjustment as a member event, applied in order with the member's events
    (idempotent by its id): (applied within 10 s, points available before, after)."""
    before = await available_points(member_id)
    event = adjustment_event(member_id, adjustment_id, points, reason)
    fut = await member_events_topic.send(key=member_id.encode(), value=event, force=True)
    await fut
    applied = await _wait_applied(member_id, f"adj:{adjustment_id}", timeout_s=10.0)
    after = await available_points(member_id)
    log.info("operator adjustment %s of %s: %+d points, reason %r (%s)", adjustment_id, member_id, points,
             reason, "applied" if applied else "queued")
    return applied, before, after


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
        return json_response(self, {"from": start, "to": end, **await backtest(candidate, start_dt, end_dt)})


async def backtest(candidate: core_ext.RuleSet, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """The stored payments and refunds of [start, end) replayed through the live rules and
    `candidate`, side by side: points, cost (what the issuing BUs pay the pool) and members
    per business unit, and how many members would earn differently."""
    rt = await runtime.started()
    rows = await rt.ledger.query("payment_history", {"start": start, "end": end})
    bodies = [history_body(r) for r in rows]
    live = core_ext.simulate(rt.rules, bodies)
    cand = core_ext.simulate(candidate, bodies)
    live_m, cand_m = live.pop("points_by_member"), cand.pop("points_by_member")
    affected = sum(1 for m in set(live_m) | set(cand_m) if live_m.get(m, 0) != cand_m.get(m, 0))
    by_bu = [{"bu": bu, "live_points": live["points_by_bu"].get(bu, 0),
              "candidate_points": cand["points_by_bu"].get(bu, 0), "live_cost_fen": live["cost_fen_by_bu"].get(bu, 0),
              "candidate_cost_fen": cand["cost_fen_by_bu"].get(bu, 0)}
             for bu in sorted(set(live["points_by_bu"]) | set(cand["points_by_bu"]))]
    return {"payments": len(bodies), "members": len(set(live_m) | set(cand_m)), "members_affected": affected,
            "by_bu": by_bu, "live": {"version": rt.rules.version, **live},
            "candidate": {"version": candidate.version, **cand}}


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
        before = runtime.rules_published
        try:
            rules = await runtime.reload_rules(operator_of(request).login)
        except core_ext.RulesError as exc:
            return error_response(self, 400, str(exc), exc.field, line=exc.line, file=exc.file)
        except GatewayConfigError as exc:
            return error_response(self, 400, str(exc), "gateways")
        after = runtime.rules_published
        web_request(request)["audit"] = {
            "action": "rules.reload", "target": str(runtime.settings.rules_path),
            "before": before.summary() if before else None, "after": after.summary() if after else None}
        return json_response(self, {"version": rules.version, "number": after.number if after else None,
                                    "gateways": runtime.gateways.path})


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
