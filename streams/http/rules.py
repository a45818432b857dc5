"""Rules from the console (docs/back-office.md): the version in force and every one
published, a candidate checked (the checker's file, line and field) and previewed against
the stored history, published for every worker, rolled back to an earlier version.

GET  /v1/admin/rules             the version in force (with its text) and the history
POST /v1/admin/rules/check       {"rules": toml, "from"?: iso, "to"?: iso}: errors, or the preview
POST /v1/admin/rules/publish     {"rules": toml, "why": text}: the next version, for every worker
POST /v1/admin/rules/rollback    {"number": n, "why": text}: version n's text as the next version
GET  /v1/admin/merchants         the merchants and their contracts in force
POST /v1/admin/merchants         {"merchant": {...}, "why": text}: added or edited, as the next version
"""

from __future__ import annotations

import tomllib
from typing import Any, cast

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, runtime
from streams.gateways.mapping import GatewayConfigError
from streams.http.admin import backtest
from streams.http.common import error_response, json_response, web_request
from streams.http.console import operator_of
from streams.inputs import BadInput, instant_in
from streams.rules_scope import changes_outside, merchants_of, with_merchant
from streams.rules_store import Published, read_history

MAX_RULES_BYTES = 512 * 1024


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_RULES_BYTES:
        raise BadInput(f"body: at most {MAX_RULES_BYTES // 1024} KiB")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"body: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadInput("body: a JSON object")
    return body


def _why(body: dict[str, Any]) -> str:
    why = body.get("why")
    if not isinstance(why, str) or not 3 <= len(why.strip()) <= 200:
        raise BadInput("why: 3-200 characters saying why (kept with the version)", "why")
    return why.strip()


def _rules_error(view: View, exc: core_ext.RulesError) -> Response:
    return error_response(view, 400, str(exc), exc.field, line=exc.line, file=exc.file)


@app.page("/v1/admin/rules")
class RulesInForce(View):
    async def get(self, request: Request) -> Response:
        history = await read_history(runtime.settings)
        current = runtime.rules_published
        return json_response(self, {
            "current": {**current.summary(), "text": current.text} if current else None,
            "versions": [v.summary() for v in sorted(history.versions.values(), key=lambda v: -v.number)],
        })


@app.page("/v1/admin/rules/check")
class RulesCheck(View):
    """Checks a candidate; with a date range, previews it against the stored history."""

    async def post(self, request: Request) -> Response:
        try:
            body = await _body(request)
            text = body.get("rules")
            if not isinstance(text, str):
                raise BadInput("rules: the TOML text")
            candidate = core_ext.RuleSet.from_toml(text, "console.toml")
        except BadInput as exc:
            return error_response(self, 400, str(exc), "rules")
        except core_ext.RulesError as exc:
            return _rules_error(self, exc)
        answer: dict[str, Any] = {"ok": True, "version": candidate.version}
        if body.get("from") or body.get("to"):
            try:
                # Not a string (None, a number): instant_in's TypeError, answered 400 below.
                start, end = (instant_in(cast(str, body.get("from")), "from"),
                              instant_in(cast(str, body.get("to")), "to"))
            except (BadInput, ValueError, TypeError) as exc:
                return error_response(self, 400, f"from / to: ISO-8601 instants ({exc})", "from")
            answer["preview"] = await backtest(candidate, start, end)
        return json_response(self, answer)


async def _publish(view: View, request: Request, text: str, why: str, source: str, action: str) -> Response:
    op = operator_of(request)
    before = runtime.rules_published
    if op.role == "bu_operator":  # their BU's own entries only (streams/rules_scope.py)
        try:
            outside = changes_outside(before.text if before else "", text, op.bu)
        except tomllib.TOMLDecodeError:
            outside = []  # the checker below names the line
        if outside:
            return error_response(view, 403, f"a BU operator of {op.bu} changes only {op.bu}'s own entries; "
                                  f"these need a group admin: {', '.join(outside[:10])}", "rules",
                                  outside=outside)
    try:
        entry: Published = await runtime.publish_rules(text, op.login, why, source)
    except core_ext.RulesError as exc:
        return _rules_error(view, exc)
    except GatewayConfigError as exc:
        return error_response(view, 400, str(exc), "gateways")
    web_request(request)["audit"] = {
        "action": action, "target": f"rules #{entry.number}",
        "before": before.summary() if before else None, "after": entry.summary()}
    return json_response(view, entry.summary(), 201)


@app.page("/v1/admin/rules/publish")
class RulesPublish(View):
    async def post(self, request: Request) -> Response:
        try:
            body = await _body(request)
            text, why = body.get("rules"), _why(body)
            if not isinstance(text, str) or not text.strip():
                raise BadInput("rules: the TOML text", "rules")
        except BadInput as exc:
            return error_response(self, 400, str(exc), exc.field)
        return await _publish(self, request, text, why, "console", "rules.publish")


@app.page("/v1/admin/rules/rollback")
class RulesRollback(View):
    async def post(self, request: Request) -> Response:
        try:
            body = await _body(request)
            number, why = body.get("number"), _why(body)
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise BadInput("number: the version to go back to (1, 2, ...)", "number")
        except BadInput as exc:
            return error_response(self, 400, str(exc), exc.field)
        old = (await read_history(runtime.settings)).versions.get(number)
        if old is None:
            return error_response(self, 404, f"no rules version #{number}", "number")
        return await _publish(self, request, old.text, why, f"rollback to #{number}", "rules.rollback")


@app.page("/v1/admin/merchants")
class Merchants(View):
    """Merchants and their contracts (rate, commission, minimum, payment limit) as data:
    an edit is the rules text with that merchant's entry added or replaced, published as the
    next version like any rules change (checked, scoped, audited, rolled back the same way)."""

    async def get(self, request: Request) -> Response:
        current = runtime.rules_published
        op = operator_of(request)
        rows = merchants_of(current.text) if current else []
        if op.role == "bu_operator":
            rows = [m for m in rows if m["bu"] == op.bu]
        return json_response(self, {"number": current.number if current else None, "merchants": rows})

    async def post(self, request: Request) -> Response:
        try:
            body = await _body(request)
            why, merchant = _why(body), body.get("merchant")
            if not isinstance(merchant, dict):
                raise BadInput("merchant: an object with id, bu, category and the contract's fields", "merchant")
        except BadInput as exc:
            return error_response(self, 400, str(exc), exc.field)
        current = runtime.rules_published
        if current is None:
            return error_response(self, 503, "no rules version in force yet")
        try:
            text = with_merchant(current.text, merchant)
        except ValueError as exc:
            return error_response(self, 400, str(exc), "merchant")
        return await _publish(self, request, text, why, f"merchant {merchant.get('id')}", "merchants.edit")
