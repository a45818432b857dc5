"""The operators' console (docs/back-office.md): who may reach /v1/admin, the audit trail,
operator accounts and the member service.

Every request under /v1/admin passes `operator_access` first: the admin token (role
`automation`) or a console session cookie (encrypted and signed, its account's epoch
current, not logged out), the permission POLICY names for the route (a route not in it is
refused), the session's CSRF token on every change; then each change the view makes is
written to the audit trail (ClickHouse `audit_log`, through the ledger topic) with who,
when, what and the state before and after that the view reports in `request["audit"]`.

GET  /console                                the console's page
POST /v1/console/login, /v1/console/logout   a session cookie; lock-out after failures
GET  /v1/admin/session                       who is signed in, their CSRF token
GET  /v1/admin/operators, POST ... (+ /{login}/disable, /{login}/reset-password)
GET  /v1/admin/audit                         the audit trail, filtered
GET  /v1/admin/members/search                by member id, phone, plate, openid, Alipay id, card
GET  /v1/admin/members/{id}/overview         the member page's data
GET  /v1/admin/approvals, POST .../{id}/approve|reject   adjustments above the threshold
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web as aiohttp_web
from faust.web import Request, Response, View

import core_ext
from streams import operators as ops
from streams.app import app, notifications_topic, record_binding, record_facts, runtime
from streams.auth import pseudonym
from streams.http.common import Refused, error_response, json_response, web_request
from streams.http.members import release_hold
from streams.inputs import PLATE, BadInput, date_in, is_valid_id
from streams.metrics import counters

log = logging.getLogger(__name__)

COOKIE = "ly_console"
CONSOLE = Path(__file__).resolve().parent.parent / "static" / "console.html"
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SEARCH_KINDS = ("member", "phone", "plate", "wechat", "alipay", "unionpay", "card")


def _codec() -> ops.SessionCodec:
    key = runtime.settings.console_session_key.get_secret_value()
    if not key:
        raise Refused(503, "console disabled: LOYALTY_CONSOLE_SESSION_KEY is not set (the admin token still works)")
    return ops.SessionCodec(key, runtime.settings.console_session_s)


def operator_of(request: Request) -> ops.Operator:
    """The operator `operator_access` let through (a view under /v1/admin only)."""
    op = web_request(request).get("operator")
    if op is None:
        raise Refused(401, "not signed in")
    return op  # type: ignore[no-any-return]


async def _session_operator(request: aiohttp_web.Request) -> tuple[ops.Operator, ops.Session]:
    session = _codec().read(request.cookies.get(COOKIE, ""))
    if session is None:
        raise Refused(401, "not signed in (or the session expired): sign in at /console")
    rt = await runtime.started()
    op = await rt.balances.operator(session.login)
    if op is None or op.disabled or op.epoch != session.epoch or await rt.balances.session_revoked(session.sid):
        raise Refused(401, "this session is no longer valid: sign in again")
    return op, session


async def _authenticate(request: aiohttp_web.Request) -> tuple[ops.Operator, ops.Session | None]:
    auth = request.headers.get("Authorization", "")
    if auth:
        token = runtime.settings.admin_token.get_secret_value()
        if not token:
            raise Refused(503, "admin API disabled: LOYALTY_ADMIN_TOKEN is not set")
        given = auth.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Refused(401, "admin token missing or wrong")
        return ops.AUTOMATION, None
    if COOKIE in request.cookies:
        return await _session_operator(request)
    raise Refused(401, "admin token missing or wrong (or sign in at /console)")


def _same_origin(request: aiohttp_web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


@aiohttp_web.middleware
async def operator_access(request: aiohttp_web.Request, handler: Any) -> aiohttp_web.StreamResponse:
    if not request.path.startswith("/v1/admin/"):
        return await handler(request)
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else None
    if canonical is None:
        return await handler(request)  # no such route: 404
    method = "GET" if request.method == "HEAD" else request.method
    permission = ops.POLICY.get((method, canonical))
    if permission is None:
        if any(route == canonical for _m, route in ops.POLICY):
            return aiohttp_web.json_response({"error": f"method {request.method} not allowed"}, status=405)
        log.error("no access rule for %s %s: refused (streams/operators.py POLICY)", request.method, canonical)
        return aiohttp_web.json_response({"error": "no access rule for this endpoint"}, status=403)
    op, session = await _authenticate(request)
    if not op.allows(permission):
        counters["admin_forbidden_total"] += 1
        return aiohttp_web.json_response(
            {"error": f"role {op.role} may not do this ({permission}: {ops.PERMISSIONS[permission]})"}, status=403)
    if session is not None and method not in SAFE_METHODS:
        sent = request.headers.get("X-CSRF-Token", "")
        if not _same_origin(request) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            counters["admin_csrf_refused_total"] += 1
            log.warning("CSRF check failed for %s %s by %s", request.method, request.path, op.login)
            return aiohttp_web.json_response({"error": "CSRF token missing or wrong: reload the console"},
                                             status=403)
    rid = request.headers.get("X-Request-Id", "")
    request["request_id"] = rid if REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
    request["operator"], request["session"], request["permission"] = op, session, permission
    response = await handler(request)
    response.headers["X-Request-Id"] = request["request_id"]
    if method not in SAFE_METHODS and canonical not in ops.READ_ONLY_POSTS and response.status < 400:
        detail = request.get("audit") or {}
        await audit(request["request_id"], op, detail.get("action") or f"{permission} {canonical}",
                    member_id=detail.get("member_id") or request.match_info.get("member_id", ""),
                    target=detail.get("target") or request.path, status=response.status,
                    before=detail.get("before"), after=detail.get("after"))
    return response


async def audit(request_id: str, op: ops.Operator, action: str, *, member_id: str = "", target: str = "",
                status: int = 200, before: Any = None, after: Any = None) -> None:
    """One row of the audit trail (append-only; the same request id is kept once)."""
    row = {"table": "audit_log", "event_id": request_id, "occurred_at_ms": int(time.time() * 1000),
           "operator": op.login, "role": op.role, "scope": op.scope, "action": action, "member_id": member_id,
           "target": target, "http_status": status, "before": before, "after": after}
    await record_facts([row])
    counters["audit_rows_total"] += 1
    log.info("audit %s: %s (%s) %s %s -> %d", request_id, op.login, op.role, action, member_id or target, status)


app.web.web_app.middlewares.append(operator_access)  # type: ignore[attr-defined]  # inside transient_failures


def _cookie_headers(token: str, max_age: int) -> dict[str, str]:
    secure = "; Secure" if runtime.settings.console_cookie_secure else ""
    return {"Set-Cookie": f"{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"}


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > 16 * 1024:
        raise Refused(413, "body too large")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"body: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise Refused(400, "body: a JSON object")
    return body


@app.page("/console")
class ConsolePage(View):
    """The console: a static page that signs in and calls the admin API with its session."""

    async def get(self, request: Request) -> Response:
        return self.bytes(CONSOLE.read_bytes(), content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy":
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'"})


@app.page("/v1/console/login")
class Login(View):
    """A password login: a fresh session (new id and CSRF token whatever cookie came), or
    401 (the same answer for an unknown login and a wrong password), or 423 once a login
    has failed LOYALTY_LOGIN_MAX_FAILURES times within LOYALTY_LOGIN_LOCK seconds."""

    async def post(self, request: Request) -> Response:
        codec = _codec()
        if not _same_origin(web_request(request)):
            return error_response(self, 403, "login from another origin refused")
        body = await json_body(request)
        login, password = body.get("login"), body.get("password")
        if not isinstance(login, str) or not ops.LOGIN.fullmatch(login) or not isinstance(password, str) \
                or not 1 <= len(password) <= 256:
            return error_response(self, 400, 'body: {"login": "<login>", "password": "<password>"}', "login")
        rt = await runtime.started()
        s = rt.settings
        failures, left_s = await rt.balances.login_failures(login)
        if failures >= s.login_max_failures:
            counters["console_logins_locked_total"] += 1
            return error_response(self, 423, f"login locked after {failures} failed attempts; try again in "
                                  f"{left_s} s or ask an admin to reset the password", "login",
                                  retry_after_s=left_s)
        op = await rt.balances.operator(login)
        ok = ops.password_matches(op.password_hash if op is not None else "", password)
        if op is None or op.disabled or not ok:
            n = await rt.balances.login_failed(login, s.login_lock_s)
            counters["console_logins_failed_total"] += 1
            log.warning("failed login for %r (%d of %d within %d s)", login, n, s.login_max_failures, s.login_lock_s)
            who = op or ops.Operator(login=login, role="unknown")
            await audit(uuid.uuid4().hex, who, "operator.login-failed" if n < s.login_max_failures
                        else "operator.locked", target=login, status=401 if n < s.login_max_failures else 423,
                        after={"failures": n})
            return error_response(self, 401, "login or password wrong")
        await rt.balances.clear_login_failures(login)
        token, session = codec.issue(op)
        await audit(uuid.uuid4().hex, op, "operator.login", target=login, after={"sid": session.sid[:6]})
        counters["console_logins_total"] += 1
        return json_response(self, {**op.public(), "csrf": session.csrf,
                                    "permissions": sorted(ops.GRANTS[op.role])},
                             headers=_cookie_headers(token, s.console_session_s))


@app.page("/v1/console/logout")
class Logout(View):
    async def post(self, request: Request) -> Response:
        op, session = await _session_operator(web_request(request))
        if not hmac.compare_digest(request.headers.get("X-CSRF-Token", "").encode(), session.csrf.encode()):
            return error_response(self, 403, "CSRF token missing or wrong: reload the console")
        rt = await runtime.started()
        await rt.balances.revoke_session(session.sid, rt.settings.console_session_s)
        await audit(uuid.uuid4().hex, op, "operator.logout", target=op.login)
        return json_response(self, {"signed_out": op.login}, headers=_cookie_headers("", 0))


@app.page("/v1/admin/session")
class WhoAmI(View):
    async def get(self, request: Request) -> Response:
        op = operator_of(request)
        session: ops.Session | None = web_request(request).get("session")
        return json_response(self, {**op.public(), "csrf": session.csrf if session else None,
                                    "permissions": sorted(ops.GRANTS[op.role]),
                                    "approval_points": runtime.settings.approval_points})


async def _save_operator(request: Request, before: ops.Operator | None, after: ops.Operator, action: str) -> None:
    """The account in Redis, its durable copy in `bindings`, the audit detail (no hash)."""
    rt = await runtime.started()
    await rt.balances.put_operator(after)
    await record_binding("operator", f"op:{after.login}", "", after.to_json())
    web_request(request)["audit"] = {
        "action": action, "target": after.login,
        "before": before.public() if before else None, "after": after.public()}
    log.info("operator %s: %s (%s)", action, after.login, after.role)


@app.page("/v1/admin/operators")
class Operators(View):
    async def get(self, request: Request) -> Response:
        rt = await runtime.started()
        return json_response(self, {"operators": [o.public() for o in await rt.balances.operators()]})

    async def post(self, request: Request) -> Response:
        body = await json_body(request)
        now_ms = int(time.time() * 1000)
        try:
            op = ops.new_operator(body.get("login"), body.get("role"), body.get("bu"), body.get("merchant"),
                                  password=body.get("password"), now_ms=now_ms)  # type: ignore[arg-type]
        except ops.OperatorInputError as exc:
            return error_response(self, 400, str(exc), exc.field)
        rt = await runtime.started()
        if op.bu and op.bu not in {b for b, _f in rt.rules.business_units}:
            return error_response(self, 400, f"bu: unknown business unit {op.bu!r}", "bu")
        if not await rt.balances.add_operator(op):
            return error_response(self, 409, f"operator {op.login} exists already", "login")
        await _save_operator(request, None, op, "operator.add")
        return json_response(self, op.public(), 201)


@app.page("/v1/admin/operators/{login}/disable")
class DisableOperator(View):
    async def post(self, request: Request, login: str) -> Response:
        rt = await runtime.started()
        op = await rt.balances.operator(login)
        if op is None:
            return error_response(self, 404, f"no operator {login}", "login")
        if op.disabled:
            return json_response(self, op.public())
        after = ops.disabled(op, int(time.time() * 1000))
        await _save_operator(request, op, after, "operator.disable")
        return json_response(self, after.public())


@app.page("/v1/admin/operators/{login}/reset-password")
class ResetPassword(View):
    async def post(self, request: Request, login: str) -> Response:
        body = await json_body(request)
        rt = await runtime.started()
        op = await rt.balances.operator(login)
        if op is None:
            return error_response(self, 404, f"no operator {login}", "login")
        try:
            after = ops.with_password(op, body.get("password"), int(time.time() * 1000))  # type: ignore[arg-type]
        except ops.OperatorInputError as exc:
            return error_response(self, 400, str(exc), exc.field)
        await rt.balances.clear_login_failures(login)
        await _save_operator(request, op, after, "operator.reset-password")
        return json_response(self, after.public())


@app.page("/v1/admin/audit")
class AuditTrail(View):
    """?operator=&member=&action=<prefix>&from=YYYY-MM-DD&to=YYYY-MM-DD&limit= (local days)."""

    async def get(self, request: Request) -> Response:
        q = request.query
        rt = await runtime.started()
        tz = dt.timezone(dt.timedelta(minutes=rt.rules.utc_offset_minutes))
        try:
            today = dt.datetime.now(tz).date()
            start = date_in(q["from"], "from") if q.get("from") else today - dt.timedelta(days=30)
            end = date_in(q["to"], "to") if q.get("to") else today
        except BadInput as exc:
            return error_response(self, 400, str(exc), "from")
        raw_limit = q.get("limit", "500")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
            return error_response(self, 400, "limit: an integer from 1 to 10000", "limit")
        for name in ("operator", "member"):
            if q.get(name) and not is_valid_id(q[name]):
                return error_response(self, 400, f"{name}: invalid", name)
        rows = await rt.ledger.query("audit_log", {
            "operator": q.get("operator", ""), "member_id": q.get("member", ""), "action": q.get("action", "")[:64],
            "start": dt.datetime.combine(start, dt.time(), tz).astimezone(dt.UTC),
            "end": dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.UTC),
            "limit": int(raw_limit)})
        for r in rows:
            for k in ("before", "after"):
                r[k] = orjson.loads(r[k]) if r[k] else None
        return json_response(self, {"rows": rows})


async def member_in_scope(request: Request, member_id: str) -> None:
    """A BU operator reaches members with ledger rows in their BU; 403 otherwise."""
    op = operator_of(request)
    if op.role != "bu_operator":
        return
    rt = await runtime.started()
    bus = {r["bu_id"] for r in await rt.ledger.query("member_bus", {"member_id": member_id})}
    if op.bu not in bus:
        raise Refused(403, f"member {member_id} has no activity in {op.bu}: outside this operator's scope",
                      "member_id")


async def statement_in_scope(request: Request, bu: str, merchant: str) -> None:
    op = operator_of(request)
    if op.role == "bu_operator" and bu != op.bu:
        raise Refused(403, f"statements of {op.bu} only (ask with bu={op.bu})", "bu")
    if op.role == "merchant_staff" and merchant != op.merchant:
        raise Refused(403, f"statements of {op.merchant} only (ask with merchant={op.merchant})", "merchant")


async def member_data(request: Request, member_id: str) -> dict[str, Any]:
    """The member's Redis data for a member page (400 bad id, 403 out of scope, 404 none)."""
    if not is_valid_id(member_id):
        raise Refused(400, "member_id: invalid", "member_id")
    await member_in_scope(request, member_id)
    rt = await runtime.started()
    data = await rt.balances.member(member_id)
    if data is None:
        raise Refused(404, f"no member {member_id}", "member_id")
    return data  # type: ignore[no-any-return]


@app.page("/v1/admin/members/search")
class MemberSearch(View):
    """?q=<text>&kind=member|phone|plate|wechat|alipay|unionpay|card: the member it names."""

    async def get(self, request: Request) -> Response:
        q, kind = request.query.get("q", "").strip(), request.query.get("kind", "member")
        if kind not in SEARCH_KINDS:
            return error_response(self, 400, f"kind: one of {', '.join(SEARCH_KINDS)}", "kind")
        if not q or len(q) > 64:
            return error_response(self, 400, "q: 1-64 characters", "q")
        rt = await runtime.started()
        member_id: str | None
        if kind == "member":
            if not is_valid_id(q):
                return error_response(self, 400, "q: not a member id", "q")
            member_id = q if await rt.balances.member(q) is not None else None
        elif kind == "plate":
            if not PLATE.fullmatch(q):
                return error_response(self, 400, "q: not a plate", "q")
            member_id = (await rt.balances.plate_binding(q)).get("member_id")
        else:
            external = q
            if kind == "phone":
                key = rt.settings.pii_key.get_secret_value()
                if not key:
                    return error_response(self, 503, "phone search needs LOYALTY_PII_KEY")
                external = pseudonym(key, q)
            elif not is_valid_id(q):
                return error_response(self, 400, f"q: not a {kind} id", "q")
            member_id = cast(str | None, await rt.balances.redis.get(rt.balances.identity_key(kind, external)))
        if member_id:
            await member_in_scope(request, member_id)
        return json_response(self, {"kind": kind, "members": [member_id] if member_id else []})


@app.page("/v1/admin/members/{member_id}/overview")
class MemberOverview(View):
    """The member page: balance by lot, tier and progress, coupons, holds, stored value,
    bindings, the last movements with their explanations, approvals waiting."""

    async def get(self, request: Request, member_id: str) -> Response:
        rt = await runtime.started()
        data = await member_data(request, member_id)
        now_ms = int(time.time() * 1000)
        state = data.get("state")
        view = core_ext.member_view(rt.rules, state, now_ms)
        wallet = orjson.loads(core_ext.coupon_wallet(rt.rules, state, now_ms))
        movements = [row for raw in await rt.balances.history(member_id) for row in orjson.loads(raw)]
        bindings = await rt.ledger.query("member_bindings", {"member_id": member_id})
        pending = [a for a in await rt.balances.approvals() if a.get("member_id") == member_id]
        raw_state = orjson.loads(state) if state else {}
        return json_response(self, {"member_id": member_id, "balance": int(data.get("balance", 0)), **view,
                                    "holds": [{"hold_id": k, "points": h.get("points", 0),
                                               "expires_at_ms": h.get("expires_at_ms")}
                                              for k, h in (raw_state.get("holds") or {}).items()],
                                    "stored_value_fen": int(raw_state.get("sv_fen", 0)),
                                    "coupons": wallet, "bindings": bindings, "recent_movements": movements[:20],
                                    "tiers": rt.rules.tier_ids,
                                    "merged_into": {k: raw_state["merged"][k] for k in ("merge_id", "into", "at_ms")}
                                    if raw_state.get("merged") else None,
                                    "merges_in": [{"merge_id": k, "from": v.get("from"), "at_ms": v.get("at_ms"),
                                                   "undone": v.get("undone") is not None}
                                                  for k, v in (raw_state.get("merges_in") or {}).items()],
                                    "approvals": pending})


# --- maker / checker ---------------------------------------------------------------------

async def apply_adjustment(member_id: str, adjustment_id: str, points: int, reason: str) -> tuple[bool, int, int]:
    """Sends the adjustment as a member event (idempotent by its id), waits until applied:
    (applied, available before, available after)."""
    from streams.http.admin import send_adjustment

    return await send_adjustment(member_id, adjustment_id, points, reason)


@app.page("/v1/admin/approvals")
class Approvals(View):
    async def get(self, request: Request) -> Response:
        rt = await runtime.started()
        op = operator_of(request)
        rows = await rt.balances.approvals()
        status = request.query.get("status", "")
        if status:
            rows = [a for a in rows if a.get("status") == status]
        if op.role == "bu_operator":
            rows = [a for a in rows if a.get("bu") == op.bu]
        return json_response(self, {"approvals": rows})


async def _decide(view: View, request: Request, approval_id: str, approve: bool) -> Response:
    op = operator_of(request)
    rt = await runtime.started()
    pending = await rt.balances.approval(approval_id)
    if pending is None:
        return error_response(view, 404, f"no approval {approval_id}", "approval_id")
    await member_in_scope(request, pending["member_id"])
    if pending["requested_by"] == op.login:
        return error_response(view, 403, "a second operator must decide: you asked for this adjustment")
    if approve and pending["status"] == "pending" and pending["points"] < 0:
        from streams.http.admin import available_points

        available = await available_points(pending["member_id"])
        if available < -pending["points"]:  # left pending: the member may earn it back
            return error_response(view, 409, f"the member has {available} points available, the adjustment "
                                  f"takes {-pending['points']}", "points", available=available)
    decided = {**pending, "status": "approved" if approve else "rejected", "decided_by": op.login,
               "decided_at_ms": int(time.time() * 1000)}
    moved, stored = await rt.balances.decide_approval(approval_id, decided)
    if stored is None:
        return error_response(view, 404, f"no approval {approval_id}", "approval_id")
    if not moved:
        return json_response(view, stored)  # decided before (a retry or another checker): as it was
    await record_binding("approval", f"approval:{approval_id}", stored["member_id"], orjson.dumps(stored).decode())
    before = after = None
    if approve:
        applied, before, after = await apply_adjustment(stored["member_id"], approval_id, stored["points"],
                                                        stored["reason"])
        stored = {**stored, "applied": applied}
    web_request(request)["audit"] = {
        "action": f"member.adjust.{'approved' if approve else 'rejected'}",
        "member_id": stored["member_id"], "target": approval_id,
        "before": {"available": before, "approval": "pending"},
        "after": {"available": after, "approval": stored["status"], "points": stored["points"]}}
    return json_response(view, stored)


@app.page("/v1/admin/approvals/{approval_id}/approve")
class Approve(View):
    async def post(self, request: Request, approval_id: str) -> Response:
        return await _decide(self, request, approval_id, True)


@app.page("/v1/admin/approvals/{approval_id}/reject")
class Reject(View):
    async def post(self, request: Request, approval_id: str) -> Response:
        return await _decide(self, request, approval_id, False)


# --- member actions ----------------------------------------------------------------------

#: Binding keys an operator may remove, by prefix -> the kind of the bindings row.
UNBINDABLE = {"plate:": "plate", "id:": "identity", "ref-phone:": "referral_phone"}


@app.page("/v1/admin/members/{member_id}/unbind")
class Unbind(View):
    """{"key": "plate:沪A12345" | "id:wechat:<openid>" | ...}: the binding removed (if it is
    this member's), in Redis and durably (an unbinding row)."""

    async def post(self, request: Request, member_id: str) -> Response:
        body = await json_body(request)
        key = body.get("key")
        kind = next((k for p, k in UNBINDABLE.items() if isinstance(key, str) and key.startswith(p)), None)
        if not is_valid_id(member_id) or kind is None or not isinstance(key, str) or len(key) > 200:
            return error_response(self, 400, f"key: a binding of the member ({', '.join(UNBINDABLE)}...), "
                                  f"not {str(key)[:80]!r}", "key")
        await member_in_scope(request, member_id)
        rt = await runtime.started()
        if not await rt.balances.unbind(key, member_id):
            return error_response(self, 404, f"{key} is not bound to {member_id}", "key")
        await record_binding(kind, key, "")
        web_request(request)["audit"] = {
            "action": "member.unbind", "member_id": member_id, "target": key,
            "before": {"key": key, "member_id": member_id}, "after": None}
        return json_response(self, {"member_id": member_id, "unbound": key})


@app.page("/v1/admin/members/{member_id}/holds/{hold_id}/cancel")
class CancelHold(View):
    """A hold's points back to the member (as a till's release does)."""

    async def post(self, request: Request, member_id: str, hold_id: str) -> Response:
        if not is_valid_id(member_id) or not is_valid_id(hold_id):
            return error_response(self, 400, "member_id / hold_id: invalid", "hold_id")
        await member_in_scope(request, member_id)

        def audited(points: int) -> None:
            web_request(request)["audit"] = {
                "action": "member.hold-cancel", "member_id": member_id, "target": hold_id,
                "before": {"hold": hold_id, "points": points}, "after": {"released": points}}
        return await release_hold(self, member_id, hold_id, audited)


@app.page("/v1/admin/members/{member_id}/coupons/{coupon_id}/resend")
class ResendCoupon(View):
    """{"resend_id": "<id>"}: the coupon's push sent again (a push id of its own, so the
    receiver takes it; the same resend id is delivered once)."""

    async def post(self, request: Request, member_id: str, coupon_id: str) -> Response:
        body = await json_body(request)
        resend_id = body.get("resend_id")
        if not is_valid_id(member_id) or not is_valid_id(coupon_id) or not isinstance(resend_id, str) \
                or not is_valid_id(resend_id) or len(resend_id) > 32:
            return error_response(self, 400, 'body: {"resend_id": "<id, 1-32 chars>"}', "resend_id")
        await member_in_scope(request, member_id)
        rt = await runtime.started()
        _seq, state, _balance = await rt.balances.member_state(member_id)
        now_ms = int(time.time() * 1000)
        coupon = next((c for c in orjson.loads(core_ext.coupon_wallet(rt.rules, state, now_ms))
                       if c["coupon_id"] == coupon_id), None)
        if coupon is None:
            return error_response(self, 404, f"member {member_id} has no coupon {coupon_id}", "coupon_id")
        if coupon["status"] != "active":
            return error_response(self, 409, f"coupon {coupon_id} is {coupon['status']}: nothing to push", "coupon_id")
        push_id = f"{coupon_id}.r.{resend_id}"
        push = orjson.dumps({"push_id": push_id, "type": "coupon_issued", "member_id": member_id,
                             "event_id": f"resend-{resend_id}", "resent": True,
                             "coupon": {k: coupon.get(k) for k in ("coupon_id", "template", "trigger", "kind",
                                                                   "face_value_fen", "valid_until_ms")},
                             "occurred_at_ms": now_ms, "processed_at_ms": now_ms})
        fut = await notifications_topic.send(key=member_id.encode(), value=push, force=True)
        await fut
        web_request(request)["audit"] = {
            "action": "member.coupon-resend", "member_id": member_id, "target": coupon_id,
            "before": None, "after": {"push_id": push_id}}
        return json_response(self, {"member_id": member_id, "coupon_id": coupon_id, "push_id": push_id}, 202)


@app.page("/v1/admin/members/{member_id}/export")
class ExportMember(View):
    """A personal data request (PIPL): everything the engine holds about one member, as one
    JSON file: the state, points by lot, coupons, bindings, ledger, coupon events, stored
    value and the audit rows about them. A POST, so the trail records who exported whom."""

    async def post(self, request: Request, member_id: str) -> Response:
        rt = await runtime.started()
        data = await member_data(request, member_id)
        now_ms = int(time.time() * 1000)
        state = data.get("state")
        q = {"member_id": member_id}
        far = {"operator": "", "member_id": member_id, "action": "", "limit": 100_000,
               "start": dt.datetime(1970, 1, 2, tzinfo=dt.UTC), "end": dt.datetime(2200, 1, 1, tzinfo=dt.UTC)}
        audit_rows = await rt.ledger.query("audit_log", far)
        for r in audit_rows:
            for k in ("before", "after"):
                r[k] = orjson.loads(r[k]) if r[k] else None
        doc = {
            "member_id": member_id, "exported_at_ms": now_ms, "exported_by": operator_of(request).login,
            "state": orjson.loads(state) if state else None,
            "view": core_ext.member_view(rt.rules, state, now_ms),
            "balance": int(data.get("balance", 0)),
            "coupons": orjson.loads(core_ext.coupon_wallet(rt.rules, state, now_ms)),
            "bindings": await rt.ledger.query("member_bindings", q),
            "ledger": await rt.ledger.query("member_export_ledger", q),
            "coupon_events": await rt.ledger.query("member_export_coupons", q),
            "stored_value": await rt.ledger.query("stored_value_of_member", q),
            "audit": audit_rows,
        }
        body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
        web_request(request)["audit"] = {
            "action": "member.export", "member_id": member_id, "target": member_id,
            "before": None, "after": {"bytes": len(body), "ledger_rows": len(doc["ledger"])}}
        return self.bytes(body, content_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="member-{member_id}.json"', "Cache-Control": "no-store"})
