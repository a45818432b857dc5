"""Coupons to an audience (docs/back-office.md): a definition over what the engine knows
(docs/marketing.md: tier, tags and computed tags, RFM segment, business unit and format
visited, last payment or dormancy, birthday month, points held and expiring, registration,
coupons held), or a saved one of the rules (`audience_id`), evaluated in ClickHouse over
the members' stored states and the ledger (sql/queries/campaign_audience.sql, the same as
the scheduled campaigns'); its count and a sample, and a send of one coupon template to
every member of it.

A send is a record in Redis (`audience-send:<id>`: template, audience, progress), its
members in a key written once (`audience-send-members:<id>`), and a `coupon_grant` member
event per member (event id `grant-<send>-<member>`), applied in order with the member's
events: a member gets the coupon once per send, whatever is sent
twice. The sending runs in the background, LOYALTY_AUDIENCE_SEND_RATE members a second,
saving its progress after each page; a send whose worker died (no progress for 30 s) is
taken up again by the leader's timer from its last page.

POST /v1/admin/audiences/preview     {"audience": {...}} or {"audience_id"}: count and a sample
POST /v1/admin/audiences/send        {"send_id", "template", "audience" or "audience_id"}: 202
GET  /v1/admin/audiences/sends/{id}  progress, and the coupons issued so far
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

from streams import clock, schedules
from streams.app import app, leader_timer, member_events_topic, runtime
from streams.http.common import Refused, error_response, json_response, web_request
from streams.http.console import json_body, operator_of
from streams.inputs import is_valid_id
from streams.metrics import counters
from streams.state.jobs import public_job

log = logging.getLogger(__name__)

STALE_MS = 30_000
PAGE = 200
#: What an audience may say (docs/marketing.md has each); every one optional, all must hold.
FIELDS = {"tiers", "tags", "segments", "bu", "formats", "dormant_days", "paid_within_days", "birthday_month",
          "points_expiring_within_days", "min_points", "registered_within_days", "holds_coupon"}
DAY_FIELDS = ("dormant_days", "paid_within_days", "points_expiring_within_days", "registered_within_days")
#: Sends this process is running now (the resume timer leaves them alone), and their tasks.
_running: set[str] = set()
_tasks: set[asyncio.Task[None]] = set()


def start_send(send_id: str) -> None:
    task = asyncio.ensure_future(_guarded(send_id))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _guarded(send_id: str) -> None:
    try:
        await run_send(send_id)
    except Exception:  # Kafka or Redis gone meanwhile: the leader's timer takes it up again
        log.exception("audience send %s stopped; it is taken up again once it has made no progress for 30 s",
                      send_id)


def audience_of(raw: object, audience_id: object = None) -> dict[str, Any]:
    """A checked audience: a saved one of the rules (`audience_id`, `[audiences.<id>]`) or a
    definition (Refused 400 naming the field otherwise)."""
    if audience_id is not None:
        saved = orjson.loads(runtime.rules.audiences_json)
        if not isinstance(audience_id, str) or audience_id not in saved:
            raise Refused(400, f"audience_id: one of the rules' saved audiences {sorted(saved)}", "audience_id")
        if raw is not None:
            raise Refused(400, "audience_id or audience, not both", "audience")
        return {"audience_id": audience_id, **saved[audience_id]}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict) or set(raw) - FIELDS:
        raise Refused(400, f"audience: an object with {', '.join(sorted(FIELDS))}", "audience")
    out: dict[str, Any] = {}
    for name in ("tiers", "tags", "segments", "formats"):
        v = raw.get(name) or []
        if not isinstance(v, list) or len(v) > 50 or not all(isinstance(x, str) and is_valid_id(x) for x in v):
            raise Refused(400, f"audience.{name}: a list of ids", f"audience.{name}")
        out[name] = v
    for name in ("bu", "holds_coupon"):
        v = raw.get(name) or ""
        if not isinstance(v, str) or (v and not is_valid_id(v)):
            raise Refused(400, f"audience.{name}: an id", f"audience.{name}")
        out[name] = v
    for name in (*DAY_FIELDS, "min_points"):
        v = raw.get(name) or 0
        top = 1_000_000_000 if name == "min_points" else 3650
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise Refused(400, f"audience.{name}: 0-{top:,}", f"audience.{name}")
        out[name] = v
    birthday = raw.get("birthday_month", False)
    if not isinstance(birthday, bool):
        raise Refused(400, "audience.birthday_month: true or false", "audience.birthday_month")
    out["birthday_month"] = birthday
    return out


async def members_of(audience: dict[str, Any]) -> list[str]:
    """The audience's members now (the engine's clock), in member order."""
    rt = await runtime.started()
    if audience["bu"] and audience["bu"] not in {b for b, _ in rt.rules.business_units}:
        raise Refused(400, f"audience.bu: unknown business unit {audience['bu']!r}", "audience.bu")
    if audience["holds_coupon"] and audience["holds_coupon"] not in rt.rules.coupon_templates:
        raise Refused(400, f"audience.holds_coupon: unknown coupon template {audience['holds_coupon']!r}",
                      "audience.holds_coupon")
    params = schedules.audience_params(audience, clock.now_ms(rt.settings.clock_file), rt.rules.utc_offset_minutes,
                                       rt.rules.points_validity_months, rt.rules.default_tier)
    return [r["member_id"] for r in await rt.ledger.query("campaign_audience", params)]


MAX_MEMBERS = 500_000


async def _load(send_id: str) -> dict[str, Any] | None:
    return await runtime.balances.load_job("audience-send", send_id)


async def _save(send: dict[str, Any], create: bool = False, members: list[str] | None = None) -> bool:
    return await runtime.balances.save_job("audience-send", send["send_id"], send, create=create, members=members)


async def run_send(send_id: str) -> None:
    """Sends the grants of a send from its saved progress to the end (page by page)."""
    if send_id in _running:
        return
    _running.add(send_id)
    try:
        send = await _load(send_id)
        if send is None or send["status"] != "sending":
            return
        rate = max(1, runtime.settings.audience_send_rate)
        members = await runtime.balances.members_to_send("audience-send", send_id, send)
        if members is None:
            log.error("audience send %s: %s; stopped", send_id, send["failed"])
            return
        while send["done"] < len(members):
            page = members[send["done"]:send["done"] + PAGE]
            t0 = time.monotonic()
            now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            futs = [await member_events_topic.send(key=m.encode(), force=True, value=orjson.dumps({
                "event_id": f"grant-{send_id}-{m}", "type": "coupon_grant", "member_id": m, "occurred_at": now,
                "template": send["template"], "send_id": send_id})) for m in page]
            await asyncio.gather(*futs)
            send["done"] += len(page)
            send["beat_ms"] = int(time.time() * 1000)
            await _save(send)
            counters["audience_grants_sent_total"] += len(page)
            await asyncio.sleep(max(0.0, len(page) / rate - (time.monotonic() - t0)))
        send["status"], send["finished_at_ms"] = "sent", int(time.time() * 1000)
        await _save(send)
        log.info("audience send %s: %d grants of %s sent", send_id, len(members), send["template"])
    finally:
        _running.discard(send_id)


@leader_timer(5.0)
async def resume_audience_sends() -> None:
    """Sends left unfinished by a worker that died (no progress for 30 s), taken up again."""
    try:
        rt = await runtime.started()
        now_ms = int(time.time() * 1000)
        for send in await rt.balances.open_jobs("audience-send"):
            if send["send_id"] not in _running \
                    and now_ms - send["beat_ms"] > STALE_MS:
                if "members" in send:  # an older record: its members moved out before it is saved
                    await rt.balances.job_members("audience-send", send["send_id"], send)
                log.warning("audience send %s stalled at %d of %d: taken up again", send["send_id"], send["done"],
                            send["total"])
                send["beat_ms"] = now_ms
                await _save(send)
                start_send(send["send_id"])
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("resuming audience sends failed; the next round tries again")


@app.page("/v1/admin/audiences/preview")
class AudiencePreview(View):
    async def post(self, request: Request) -> Response:
        body = await json_body(request)
        audience = audience_of(body.get("audience"), body.get("audience_id"))
        members = await members_of(audience)
        return json_response(self, {"audience": audience, "count": len(members), "sample": members[:20],
                                    "templates": runtime.rules.coupon_templates,
                                    "saved": sorted(orjson.loads(runtime.rules.audiences_json))})


@app.page("/v1/admin/audiences/send")
class AudienceSend(View):
    async def post(self, request: Request) -> Response:
        body = await json_body(request)
        send_id, template = body.get("send_id"), body.get("template")
        if not isinstance(send_id, str) or not is_valid_id(send_id) or len(send_id) > 32:
            return error_response(self, 400, "send_id: an id of 1-32 characters (a retry reuses it)", "send_id")
        rt = await runtime.started()
        if template not in rt.rules.coupon_templates:
            return error_response(self, 400, f"template: one of {rt.rules.coupon_templates}", "template")
        audience = audience_of(body.get("audience"), body.get("audience_id"))
        existing = await _load(send_id)
        if existing is not None:  # a retry: answered as it stands
            return json_response(self, public_job(existing), 200)
        members = await members_of(audience)
        if len(members) > MAX_MEMBERS:
            return error_response(self, 400, f"audience: {len(members):,} members; at most {MAX_MEMBERS:,} a send "
                                  "(narrow it, or send in parts)", "audience")
        op = operator_of(request)
        send = {"send_id": send_id, "template": template, "audience": audience, "total": len(members), "done": 0,
                "status": "sending", "by": op.login, "started_at_ms": int(time.time() * 1000),
                "beat_ms": int(time.time() * 1000)}
        if not await _save(send, create=True, members=members):
            return json_response(self, public_job(await _load(send_id) or send), 200)
        start_send(send_id)
        web_request(request)["audit"] = {
            "action": "audience.send", "target": send_id, "before": None,
            "after": {"template": template, "audience": audience, "members": len(members)}}
        return json_response(self, public_job(send), 202)




@app.page("/v1/admin/audiences/sends/{send_id}")
class AudienceSendStatus(View):
    async def get(self, request: Request, send_id: str) -> Response:
        send = await _load(send_id) if is_valid_id(send_id) else None
        if send is None:
            return error_response(self, 404, f"no audience send {send_id}", "send_id")
        rt = await runtime.started()
        issued = await rt.ledger.query("audience_issued", {"trigger": f"audience:{send_id}"})
        return json_response(self, {**public_job(send), "issued": int(issued[0]["issued"]),
                                    "issued_members": int(issued[0]["members"])})
