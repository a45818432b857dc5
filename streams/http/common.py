"""What every HTTP view shares: JSON answers and refusals (a refused callback is
dead-lettered), reading a body within its limits, signed requests (HMAC, nonce, POS keys
and their rate), who reads (admin, POS, member tokens), and a member operation's answer.
Backing services out of reach while a request is served answer 503 (the middleware)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web as aiohttp_web
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

import core_ext
from streams.app import (
    TRANSIENT,
    app,
    runtime,
    send_dead_letter,
)
from streams.auth import Principal, bearer_principal
from streams.errors import InputError
from streams.ingress import Coalescer
from streams.inputs import is_valid_id
from streams.metrics import counters
from streams.signing import SignatureError, verify
from streams.transactions import Commit, MemberBusy, transact

log = logging.getLogger(__name__)


def web_request(request: Request) -> aiohttp_web.Request:
    """A view's request as what it is, aiohttp's: faust's `Request` type declares neither its
    per-request values (`request["audit"]`, the middleware's "operator" and "session") nor
    its cookies, scheme or host."""
    return cast(aiohttp_web.Request, request)


def json_response(view: View, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return view.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)


class Refused(InputError):
    """A request refused: the middleware answers it with `status` and the JSON error
    {"error", "field"?, ...extra} (and `headers`). Raised by the helpers that read and check
    a request, so a view's own code starts from a body that passed."""

    def __init__(self, status: int, error: str, field: str | None = None, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.field, self.headers = status, field, headers
        self.body: dict[str, Any] = {"error": error, **({"field": field} if field is not None else {}), **extra}


async def rejected(status: int, reason: str, body: bytes, field: str | None = None) -> Refused:
    """A refused callback: dead-lettered with the reason (its body kept), then the Refused
    to raise."""
    counters["callbacks_rejected_total"] += 1
    try:
        await send_dead_letter(source="ingress", reason=reason, field=field, body=body)
    except KafkaError:
        # The caller still gets its 4xx; the body is in our log instead.
        log.exception("could not dead-letter a rejected callback (%s): %r", reason, body[:2000])
    return Refused(status, reason, field)


async def refused_by_core(exc: core_ext.InvalidEventError | core_ext.RejectedEventError, body: bytes,
                          counter: str) -> Refused:
    """The core refused an operation: bad input is dead-lettered and answered 400; a
    well-formed request the rules or the member's state refuse is counted under `counter`
    and answered 409."""
    if isinstance(exc, core_ext.RejectedEventError):
        counters[counter] += 1
        return Refused(409, exc.reason, exc.field)
    return await rejected(400, str(exc), body, exc.field)


@aiohttp_web.middleware
async def transient_failures(request: aiohttp_web.Request, handler: Any) -> aiohttp_web.StreamResponse:
    """A refused request gets its JSON error (Refused); Redis or Kafka out of reach while a
    request is served: 503 with Retry-After (the caller tries again), not a 500; anything
    else unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except aiohttp_web.HTTPException:
        raise
    except Refused as exc:
        return aiohttp_web.Response(body=orjson.dumps(exc.body), status=exc.status, headers=exc.headers,
                                    content_type="application/json")
    except TRANSIENT as exc:
        counters["requests_unavailable_total"] += 1
        log.warning("%s %s: a backing service is unavailable: %r", request.method, request.path, exc)
        return aiohttp_web.json_response({"error": "temporarily unavailable, retry"}, status=503,
                                         headers={"Retry-After": "1"})


app.web.web_app.middlewares.append(transient_failures)  # type: ignore[attr-defined]  # faust types Web loosely


def error_response(view: View, status: int, error: str, field: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return json_response(view, body, status)


async def reject(view: View, status: int, reason: str, body: bytes, field: str | None = None) -> Response:
    """A refused callback's answer, once dead-lettered (`rejected`), for a view that returns it."""
    await rejected(status, reason, body, field)
    return error_response(view, status, reason, field)


JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded",)


async def read_body(request: Request, types: tuple[str, ...] | None = JSON_TYPES) -> bytes:
    """The body of a request within the size limit, or Refused: 415 for
    a Content-Encoding (no gateway compresses its callbacks; the signature covers the bytes
    sent) or, where `types` is given, a Content-Type not among them; our own 413 (JSON, and
    a dead letter with the first bytes) past LOYALTY_MAX_BODY_BYTES, chunked or not: the
    body is read here up to the limit, never whole first."""
    settings = runtime.settings
    refusal: tuple[int, str, str] | None = None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if encoding not in ("", "identity"):
        refusal = (415, f"Content-Encoding: {encoding[:40]!r} is not accepted; send the body as is (identity)",
                   "Content-Encoding")
    elif types is not None and ctype not in types:
        refusal = (415, f"Content-Type: must be {' or '.join(types)}, got {ctype[:60]!r}", "Content-Type")
    # Read here up to the limit and no further, whatever the transfer encoding: the dead
    # letter of a refused body keeps its first bytes (and so its event id).
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):  # type: ignore[attr-defined]
        body += chunk
        if len(body) > settings.max_body_bytes:
            break
    first = bytes(body[: settings.max_body_bytes])
    if refusal is not None:
        raise await rejected(refusal[0], refusal[1], first, field=refusal[2])
    if len(body) > settings.max_body_bytes:
        raise await rejected(413, f"body larger than {settings.max_body_bytes} bytes", first, field="body")
    return first


async def read_signed(request: Request, scope: str = "callback", *, nonce_later: bool = False,
                      strict: bool = True, body: bytes | None = None, shown: bytes | None = None) -> bytes:
    """The body of a signed request, or Refused. `scope` is whose
    secret signs it: "callback" (the gateways' LOYALTY_CALLBACK_SECRET, no X-Key-Id) or
    "pos" (the POS key named by X-Key-Id; rate-limited per key). A nonce is taken once:
    here, or (`nonce_later`, the payment callback) by the caller in the round trip that
    claims the event id. The body is checked as strict JSON here unless the caller's own
    validator is strict (`strict=False`: the payment and member callbacks, whose core
    validators refuse repeated keys, and which check before any phone rewrite). A caller
    that read the body itself (an image upload) passes it, and what a dead letter of a
    refusal shows of it (`shown`) in place of the bytes."""
    settings = runtime.settings
    if body is None:
        body = await read_body(request)
    kept = body if shown is None else shown
    key_id = request.headers.get("X-Key-Id")
    rt = await runtime.started()
    if scope == "pos":
        if not rt.pos_keys:
            raise Refused(503, "till API disabled: LOYALTY_POS_KEYS is not set")
        secret = rt.pos_keys.get(key_id or "")
        if secret is None:
            raise await rejected(401, "X-Key-Id: required, a POS key this service knows", kept,
                                      field="X-Key-Id")
    else:
        if not settings.callback_secret.get_secret_value():
            raise Refused(503, "callbacks disabled: LOYALTY_CALLBACK_SECRET is not set")
        if key_id is not None:
            raise await rejected(403, "X-Key-Id: POS keys may not send gateway callbacks", kept,
                                      field="X-Key-Id")
        secret = settings.callback_secret.get_secret_value()
    nonce = request.headers.get("X-Nonce")
    try:
        verify(secret, request.headers.get("X-Timestamp"), nonce, request.headers.get("X-Signature"), body,
               settings.signature_max_age_s)
    except SignatureError as exc:
        raise await rejected(401, str(exc), kept, field="X-Signature") from None
    if scope == "pos" and not await rt.balances.rate_hit(f"pos:{key_id}", settings.rate_limit_pos):
        counters["requests_rate_limited_total"] += 1
        raise Refused(429, f"rate limit of {settings.rate_limit_pos}/s for key {key_id}", headers={"Retry-After": "1"})
    if not nonce_later and not await claim_nonce((key_id or "callback", nonce or "")):
        raise await rejected(401, NONCE_USED, kept, field="X-Nonce")
    if strict and body.strip():
        # One JSON object, no key repeated at any depth, before anything reads it.
        try:
            core_ext.check_json_object(body)
        except core_ext.InvalidEventError as exc:
            raise await rejected(400, str(exc), body, field=exc.field) from None
    return body


NONCE_USED = "X-Nonce: already used (a replayed request); sign every attempt anew"


async def reader(request: Request, member_id: str | None = None, *, members_too: bool = False) -> Principal:
    """Who reads: the admin token, a POS key (`Bearer pos:<id>:<secret>`) or the member's own
    token; Refused 401 without one, 403 for another member's data, 429 past the key's rate.
    `members_too`: data of no one member that a member token may read too (leaderboards)."""
    rt = await runtime.started()
    settings = rt.settings
    who = bearer_principal(request.headers.get("Authorization", ""), settings.admin_token.get_secret_value(),
                           rt.pos_keys, settings.member_token_secret.get_secret_value())
    if who is None:
        raise Refused(401, "Authorization: Bearer <member token | pos:<key id>:<secret> | admin token>"
                              " required")
    if member_id is not None and not who.may_read(member_id):
        raise Refused(403, "this member token is for another member")
    if member_id is None and who.kind == "member" and not members_too:
        raise Refused(403, "a POS key or the admin token is required here, not a member token")
    limit = {"member": settings.rate_limit_member, "pos": settings.rate_limit_pos}.get(who.kind)
    if limit is not None and not await rt.balances.rate_hit(who.client_key, limit):
        counters["requests_rate_limited_total"] += 1
        raise Refused(429, f"rate limit of {limit}/s for this key", headers={"Retry-After": "1"})
    return who


async def _claim_many(claims: list[tuple[str, str]]) -> list[bool]:
    rt = await runtime.started()
    return await rt.balances.claim_nonces(claims, rt.settings.nonce_window_s)


# Nonce claims of concurrent requests share one Redis round trip.
claim_nonce: Coalescer[tuple[str, str], bool] = Coalescer(_claim_many)


def member_busy(view: View) -> Response:
    """The answer when a member's state kept moving for MAX_ATTEMPTS sequence-checked tries."""
    return json_response(view, {"error": "member busy, retry"}, 503, headers={"Retry-After": "1"})


async def member_operation(view: View, member_id: str,
                           decide: Callable[[int, str | None], Awaitable[Response | Commit[Response]]]) -> Response:
    """One member operation through `transact` (streams/transactions.py); 503 if busy."""
    try:
        return await transact(member_id, decide)
    except MemberBusy:
        return member_busy(view)


async def member_or_reject(body: bytes, *path_ids: str) -> str:
    """The body's valid `member_id` (and valid ids in the path), or Refused (400; 409 for
    an account merged into another: the operation is the other account's)."""
    member_id = member_of(body)
    if member_id is None or not all(is_valid_id(i) for i in path_ids):
        raise await rejected(400, "member_id: required, letters, digits, _ - . : @", body, "member_id")
    await not_merged(member_id)
    return member_id


async def not_merged(member_id: str) -> None:
    """Refused 409 (`merged_into`) for an account merged into another: a write is the other
    account's to take."""
    if (into := await account_of(member_id)) != member_id:
        raise Refused(409, f"member {member_id} was merged into {into}: ask again with {into}", "member_id",
                      merged_into=into)


async def account_of(member_id: str) -> str:
    """The account a member id names now: the account kept if it was merged
    (streams/http/merges.py), else itself."""
    rt = await runtime.started()
    return await rt.balances.alias_of(member_id) or member_id


async def catalogue_reader(request: Request) -> tuple[str, str | None]:
    """A catalogue read (the points mall's, the members' events'): the `member_id` asked (""
    for none) once the reader may see it, and that member's stored state (None without)."""
    member_id = request.query.get("member_id", "")
    if member_id and not is_valid_id(member_id):
        raise Refused(400, "member_id: an id", "member_id")
    await reader(request, member_id or None)
    if not member_id:
        return "", None
    rt = await runtime.started()
    _seq, state, _balance = await rt.balances.member_state(await account_of(member_id))
    return member_id, state


async def member_state_part(request: Request, member_id: str, part: str) -> tuple[str, dict[str, Any]]:
    """One part of a member's stored state (its orders, receipts, sign-ups) for a reader who
    may see the member: (the account's id, the part; {} for none)."""
    if not is_valid_id(member_id):
        raise Refused(400, "member_id: an id", "member_id")
    await reader(request, member_id)
    rt = await runtime.started()
    account = await account_of(member_id)
    _seq, state, _balance = await rt.balances.member_state(account)
    return account, (orjson.loads(state).get(part) or {}) if state else {}


async def signed_member_request(request: Request, *path_ids: str) -> tuple[bytes, str]:
    """A signed request about one member: (body, member id), or Refused."""
    body = await read_signed(request, "pos")
    return body, await member_or_reject(body, *path_ids)


def member_of(body: bytes) -> str | None:
    """The valid `member_id` of a JSON request body, or None."""
    try:
        member_id = orjson.loads(body).get("member_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return member_id if isinstance(member_id, str) and is_valid_id(member_id) else None


def admin_denied(view: View, request: Request) -> Response | None:
    """401 unless the console's middleware (streams/http/console.py: operator_access) let
    this /v1/admin request through: the admin token, or a session whose role the route's
    permission allows. A second line behind the middleware."""
    if web_request(request).get("operator") is None:
        return error_response(view, 401, "admin token missing or wrong")
    return None
