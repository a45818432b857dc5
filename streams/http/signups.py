"""Members' events with sign-up (docs/points-mall.md: members' events): the events as a member
sees them, signing up (a seat taken atomically with the member's write, or the waitlist when
the seats are taken or members wait already), cancelling (the points back, the seat to the
first on the waitlist), the member's sign-ups with the code that checks them in, check-in at
the door, and, once an event is over, its no-shows (the leader's timer).

GET  /v1/events?member_id=                     the events, `can_sign_up` / `why_not` per event
POST /v1/events/{event}/sign-ups               {"member_id"} + Idempotency-Key (signed POS)
POST /v1/events/{event}/cancellations          {"member_id"} + Idempotency-Key (signed POS)
GET  /v1/members/{member_id}/events            the member's sign-ups, a check-in code per seat
POST /v1/events/{event}/check-ins              {"code"} (signed POS: the door's scanner)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, leader_timer, runtime
from streams.http.common import (
    Refused,
    catalogue_reader,
    error_response,
    json_response,
    member_state_part,
    read_signed,
    signed_member_request,
)
from streams.http.engage import apply_as_system, engage, with_path
from streams.inputs import is_valid_id
from streams.metrics import counters
from streams.recovery import EVENT_KEEP_MS
from streams.transactions import MemberBusy

log = logging.getLogger(__name__)

KEEP_MS = EVENT_KEEP_MS  # the waitlist and seat lists live this long after the event ends


def _events(rt: Any) -> dict[str, dict[str, Any]]:
    return {e["event"]: e for e in core_ext.events_catalogue(rt.rules, None, {}, 0)}


def _budgets(rt: Any, event: str) -> dict[str, int | None]:
    return {b: limit for b, limit in rt.rules.budgets if b == f"event:{event}"}


def check_in_code(secret: str, event: str, member_id: str) -> str:
    """The code a member shows at the door (a QR code's text): the event, the member and the
    engine's HMAC of both; nobody without the engine's secret can make one."""
    mac = hmac.new(secret.encode(), f"event-qr|{event}|{member_id}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{event}.{member_id}.{mac}"


def _code_secret() -> str:
    return runtime.settings.member_token_secret.get_secret_value()


def member_of_code(code: str, event: str) -> str:
    """The member a check-in code names, or Refused 400 when it is not the engine's for this event."""
    parts = code.split(".") if isinstance(code, str) else []
    member_id = ".".join(parts[1:-1]) if len(parts) >= 3 else ""
    if parts[:1] != [event] or not is_valid_id(member_id) or not hmac.compare_digest(
            check_in_code(_code_secret(), event, member_id), code):
        raise Refused(400, "code: not this event's check-in code (made by the engine for a member's seat)", "code")
    return member_id


@app.page("/v1/events")
class Events(View):
    async def get(self, request: Request) -> Response:
        member_id, state = await catalogue_reader(request)
        rt = await runtime.started()
        spent = await rt.balances.budget_spent([b for b, _ in rt.rules.budgets if b.startswith("event:")])
        now_ms = int(time.time() * 1000)
        events = core_ext.events_catalogue(rt.rules, state or ("{}" if member_id else None), spent, now_ms)
        for e in events:
            e["waiting"] = await rt.balances.waiting(e["event"])
        return json_response(self, {"member_id": member_id or None, "events": events})


async def _event_request(request: Request, event: str) -> tuple[bytes, str, dict[str, Any]]:
    """A signed request of a member about an event: (body with the event, member id, the
    event), or Refused (400 for another event in the body, 404 for an unknown one)."""
    body, member_id = await signed_member_request(request, event)
    req = with_path(body, "event", event)
    if req is None:
        raise Refused(400, "event: the body names another event than the path", "event")
    found = _events(await runtime.started()).get(event)
    if found is None:
        raise Refused(404, f"no event {event}", "event")
    return req, member_id, found


@app.page("/v1/events/{event}/sign-ups")
class SignUps(View):
    async def post(self, request: Request, event: str) -> Response:
        req, member_id, found = await _event_request(request, event)
        rt = await runtime.started()
        waiting = await rt.balances.waiting(event)

        async def context() -> dict[str, Any]:
            return {"waiting": waiting}

        async def then(answer: dict[str, Any]) -> None:
            expire = int(found["ends_at_ms"]) + KEEP_MS
            joined = int(answer["signed_at_ms"])  # the state's own time: a rebuild orders the list the same
            if answer["status"] == "waitlisted":
                await rt.balances.join_waitlist(event, member_id, joined, expire)
                counters["event_waitlisted_total"] += 1
            else:
                await rt.balances.seat(event, member_id, joined, expire)
                counters["event_signups_total"] += 1
            log.info("event %s: %s %s", event, member_id, answer["status"])
        return await engage(self, "event_signup", member_id, request.headers.get("Idempotency-Key", ""), req,
                            context=context, budgets=_budgets(rt, event), then=then)


@app.page("/v1/events/{event}/cancellations")
class Cancellations(View):
    async def post(self, request: Request, event: str) -> Response:
        req, member_id, _found = await _event_request(request, event)
        rt = await runtime.started()

        async def then(answer: dict[str, Any]) -> None:
            await rt.balances.leave_waitlist(event, member_id)
            await rt.balances.unseat(event, member_id)
            counters["event_cancellations_total"] += 1
            promoted = await promote(event)
            log.info("event %s: %s cancelled; promoted from the waitlist: %s", event, member_id, promoted or "none")
        return await engage(self, "event_cancel", member_id, request.headers.get("Idempotency-Key", ""), req,
                            then=then)


@app.page("/v1/members/{member_id}/events")
class MemberEvents(View):
    async def get(self, request: Request, member_id: str) -> Response:
        account, signups = await member_state_part(request, member_id, "signups")
        rows = []
        for event, s in signups.items():
            row = {"event": event, **{k: v for k, v in s.items() if k != "lots"}}
            if s.get("status") == "registered":
                row["check_in_code"] = check_in_code(_code_secret(), event, account)
            rows.append(row)
        rows.sort(key=lambda r: r.get("signed_at_ms", 0), reverse=True)
        return json_response(self, {"member_id": member_id, "signups": rows})


@app.page("/v1/events/{event}/check-ins")
class CheckIns(View):
    async def post(self, request: Request, event: str) -> Response:
        body = await read_signed(request, "pos")
        req = orjson.loads(body) if body.strip() else None
        if not isinstance(req, dict) or set(req) != {"code"}:
            return error_response(self, 400, 'body: {"code"}', "body")
        rt = await runtime.started()
        if event not in _events(rt):
            return error_response(self, 404, f"no event {event}", "event")
        member_id = member_of_code(req["code"], event)
        op = orjson.dumps({"member_id": member_id, "event": event})

        async def then(answer: dict[str, Any]) -> None:
            counters["event_checkins_total"] += 1
            log.info("event %s: %s checked in", event, member_id)
        # One check-in per seat: a second scan answers the first's answer.
        return await engage(self, "event_checkin", member_id, f"in-{event}-{member_id}"[:64], op, then=then)


def event_body(member_id: str, event: str) -> bytes:
    return orjson.dumps({"member_id": member_id, "event": event})


async def promote(event: str) -> list[str]:
    """Gives free seats to the waitlist, first come first served: each promoted member's
    points are taken with the seat; one who cannot be (points short, left) is skipped; when
    no seat is free the member goes back to the head of the list. Returns who got a seat."""
    rt = await runtime.started()
    found = _events(rt).get(event)
    if found is None:
        return []
    budgets = _budgets(rt, event)
    promoted: list[str] = []
    while (head := await rt.balances.next_waiting(event)) is not None:
        member_id, joined = head
        try:
            outcome = await apply_as_system("event_promote", member_id, f"up-{event}-{member_id}-{joined}"[:64],
                                            event_body(member_id, event), budgets)
        except MemberBusy:
            outcome = "seats: busy"
        if outcome in ("done", "done before"):
            await rt.balances.seat(event, member_id, joined, int(found["ends_at_ms"]) + KEEP_MS)
            promoted.append(member_id)
            counters["event_promoted_total"] += 1
            continue
        if outcome.startswith("seats"):
            await rt.balances.join_waitlist(event, member_id, joined, int(found["ends_at_ms"]) + KEEP_MS)
            break
        log.info("event %s: %s not promoted (%s)", event, member_id, outcome)
    return promoted


@leader_timer(10.0)
async def events_round() -> None:
    """Seats given back (or added by the rules) go to the waitlist; an event over closes:
    its no-shows are recorded (points kept, the ban) and its waitlist let go."""
    try:
        rt = await runtime.started()
        now_ms = int(time.time() * 1000)
        for event, e in _events(rt).items():
            if now_ms < int(e["starts_at_ms"]) and await rt.balances.waiting(event):
                await promote(event)
            elif int(e["ends_at_ms"]) <= now_ms < int(e["ends_at_ms"]) + KEEP_MS:
                for member_id in await rt.balances.seated_and_waiting(event):
                    try:
                        outcome = await apply_as_system("event_close", member_id, f"close-{event}-{member_id}"[:64],
                                                        event_body(member_id, event))
                    except MemberBusy:
                        continue  # the next round
                    await rt.balances.unseat(event, member_id)
                    await rt.balances.leave_waitlist(event, member_id)
                    if outcome == "done":
                        counters["event_closed_total"] += 1
                    log.info("event %s over: %s %s", event, member_id, outcome)
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("the members' events' round failed; the next round tries again")
