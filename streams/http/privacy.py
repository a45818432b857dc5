"""Erasing a member (China's PIPL), from the console (docs/back-office.md, docs/security.md).

An erasure takes the member, and the accounts merged into it (the same person), out of
every store, while the books keep their amounts under a pseudonym (`erased-<random>`, not
derived from the member id, so nothing leads back):

1. an `erase` member event per account, applied by the accrual worker in order with its
   other events (core_ext/src/behaviour.rs): the balance is forfeited like an expiry (its
   breakage booked as the rules say), the state emptied. Refused while points are held at a
   till, a partner exchange waits or stored value (the member's money) is left;
2. once the ledger has those rows, ClickHouse (streams/sinks/ledger.py
   `erase_members_sync`): ledger, stored value, game draws, settlement lines and coupon
   events re-keyed to the pseudonym; states, segments, records, held refunds and bindings
   deleted; the payers' guest payments, gateway routes and their plates' parking sessions
   deleted; plates blanked; the audit trail's rows about them keep who did what and when,
   under the pseudonym, without details;
3. Redis: the members' keys, bindings (ids, plates, referral phones, aliases), guest
   payments, parking sessions, schedules, leaderboard entries, held refunds, merge records
   and approvals; receipt and event claims name the pseudonym. Every key is found from
   what ClickHouse said before step 2 (`_what_names`, kept in the record while it is
   erasing) or an index: no scan of the keyspace.

Kafka's records cannot be edited: the inputs, the ledger topic and the dead letters keep
copies until their retention ends (7, 14 and 30 days); the erasure's record says when the
last is gone (`kafka_gone_by_ms`). Phones never reach Kafka in clear (pseudonyms only).

The erasure's record (`erasure:<id>`, id = HMAC of the member id under LOYALTY_PII_KEY; kind
`erasure` in the bindings table once done) holds no member id once the erasure is done: asking
again answers it (200), a half-done one (a worker killed) is taken up again.

POST /v1/admin/members/{member_id}/erase   {"reason", "confirm": "<member id>"}: erased (200)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams import faults
from streams.app import app, record_binding, runtime
from streams.http.common import Refused, error_response, json_response, web_request
from streams.http.console import json_body, operator_of
from streams.http.merges import MergeRefused, check_event, send_and_wait
from streams.inputs import is_valid_id
from streams.metrics import counters
from streams.state.operators import NAMED, Named

log = logging.getLogger(__name__)

#: What Kafka keeps at most (the dead letters' retention): copies are gone by then.
KAFKA_KEEP_MS = 30 * 86_400_000
LEDGER_WAIT_S = 60.0
_running: set[str] = set()


def erasure_id(pii_key: str, member_id: str) -> str:
    return hmac.new(pii_key.encode(), b"erase\0" + member_id.encode(), hashlib.sha256).hexdigest()[:24]


def _event(erasure: dict[str, Any], member_id: str, n: int) -> bytes:
    return orjson.dumps({"event_id": f"erase:{erasure['erasure_id']}:{n}", "type": "erase",
                         "occurred_at": erasure["occurred_at"], "member_id": member_id})


def _delete_images(names: list[str]) -> int:
    """The erased members' receipt photos, deleted from the image store; how many were there."""
    from streams.http.receipts import image_path

    n = 0
    for name in names:
        try:
            image_path(name).unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


async def _save(erasure: dict[str, Any]) -> None:
    rt = await runtime.started()
    erasure["beat_ms"] = int(time.time() * 1000)
    await rt.balances.save_erasure(erasure)


async def _ledger_has(event_ids: list[str]) -> bool:
    rt = await runtime.started()
    rows = await rt.ledger.query_sql("SELECT count() AS n FROM ledger WHERE event_id IN {e:Array(String)}",
                                     {"e": event_ids})
    return int(rows[0]["n"]) >= len(event_ids)


async def _what_names(ids: list[str], pseudonym: str) -> dict[str, Any]:
    """What in Redis names the members, found in ClickHouse (its bindings, ledger and
    receipts) without scanning Redis' keyspace: their bound keys (external ids, plates,
    referral phones), payers, plates and the parking sessions of those plates, gateway
    routes of their payers, event ids, the inviters whose reward names them, receipt photos
    and claims, and every leaderboard their payments could have scored on. The pseudonym
    is asked too: a ledger or receipt row already re-keyed is still theirs."""
    rt = await runtime.started()
    q = rt.ledger.query_sql
    keys = sorted({r["key"] for r in await q(
        "SELECT DISTINCT key FROM bindings WHERE member_id IN {m:Array(String)}"
        " AND kind IN ('identity', 'plate', 'referral_phone')", {"m": ids})})
    payers = [k.split(":", 2)[1:] for k in keys if k.startswith("id:")]
    plates = [k.removeprefix("plate:") for k in keys if k.startswith("plate:")]
    mine = {"m": [*ids, pseudonym]}
    # Bucketed by a quarter of an hour (every UTC offset is a multiple of one): a payment's
    # boards are its business unit's and the group's, of its local week and month.
    scored = await q("SELECT DISTINCT bu_id, intDiv(toUnixTimestamp64Milli(occurred_at), 900000) AS q15"
                     " FROM ledger WHERE member_id IN {m:Array(String)} AND bu_id != ''", mine)
    offset = rt.rules.utc_offset_minutes
    boards = sorted({b for r in scored for at in (int(r["q15"]) * 900_000, int(r["q15"]) * 900_000 + 899_999)
                     for b in core_ext.candidate_boards(r["bu_id"], at, offset)})
    # Their events' claims (`eid:<event id>`) name them: the events in the ledger, the
    # refunds held or dead-lettered at their deadline, and whatever else their records hold.
    events = {r["event_id"] for r in await q(
        "SELECT DISTINCT event_id FROM ledger WHERE member_id IN {m:Array(String)} UNION DISTINCT"
        " SELECT DISTINCT event_id FROM held_refunds WHERE member_id IN {m:Array(String)}", mine)}
    for m in ids:
        events.update(await rt.balances.event_records(m))
    return {
        "keys": keys, "payers": payers, "plates": plates,
        "parking": [r["key"] for r in await q(
            "SELECT DISTINCT key FROM bindings WHERE kind = 'parking'"
            " AND arrayExists(p -> endsWith(key, concat(':', p)), {p:Array(String)})", {"p": plates})]
        if plates else [],
        "routes": [r["key"] for r in await q(
            "SELECT DISTINCT key FROM bindings WHERE kind = 'route' AND"
            " arrayExists(e -> position(value, e) > 0, {e:Array(String)})", {"e": [e for _, e in payers]})],
        "inviters": [[r["member_id"], r["event_id"]] for r in await q(
            "SELECT DISTINCT member_id, event_id FROM ledger WHERE event_id IN {r:Array(String)}",
            {"r": [f"referral:{m}" for m in ids]})],
        "event_ids": sorted(events),
        "images": [r["image"] for r in await q(
            "SELECT DISTINCT image FROM receipts WHERE member_id IN {m:Array(String)} AND image != ''", mine)],
        "receipts": [r["receipt_id"] for r in await q(
            "SELECT DISTINCT receipt_id FROM receipts WHERE member_id IN {m:Array(String)}", mine)],
        "boards": boards,
    }


async def run_erasure(erasure: dict[str, Any]) -> dict[str, Any]:
    """Takes an erasure as far as it goes: "erased", "erasing" (the leader's timer goes on
    with it) or "refused" with the reason. Idempotent."""
    rt = await runtime.started()
    eid, ids = erasure["erasure_id"], list(erasure["accounts"])
    _running.add(eid)
    try:
        events = [_event(erasure, m, n) for n, m in enumerate(ids)]
        for m, ev in zip(ids, events, strict=True):
            try:
                if not await send_and_wait(m, ev):
                    await _save(erasure)
                    return erasure
            except MergeRefused as exc:
                erasure.update(status="refused", refused={"field": exc.field, "reason": exc.reason})
                await _save(erasure)
                return erasure
        event_ids = [orjson.loads(ev)["event_id"] for ev in events]
        deadline = time.monotonic() + LEDGER_WAIT_S
        # Every row of theirs in ClickHouse first: the erase rows, and no outbox left unsent.
        while not await _ledger_has(event_ids) or await rt.balances.outboxes_pending(ids):
            if time.monotonic() > deadline:
                await _save(erasure)
                return erasure
            await asyncio.sleep(0.2)
        found = erasure.get("found")
        if found is None:
            # What names them, read once and kept in the record while it is erasing: once
            # ClickHouse is erased it cannot say again, and a worker killed after that step
            # still finds every Redis key to erase.
            found = await _what_names(ids, erasure["pseudonym"])
            erasure["found"] = found
            await _save(erasure)
        named = Named(**{**{k: found[k] for k in NAMED}, "payers": [(kind, ext) for kind, ext in found["payers"]]})
        touched = await rt.ledger.in_thread(rt.ledger.erase_members_sync, ids, erasure["pseudonym"],
                                            named.payers, named.plates, named.keys)
        touched["receipt_images"] = await asyncio.to_thread(_delete_images, found["images"])
        if faults.take(runtime.settings.faults_dir, "erasure-die-after-clickhouse"):
            faults.die_like_sigkill("erasure-die-after-clickhouse")
        alias = erasure["pseudonym"]
        removed = await rt.balances.erase_members(ids, alias, named)
        for inviter, ref in found["inviters"]:
            m = ref.removeprefix("referral:")
            removed += await rt.balances.rewrite_mentions(inviter, [
                (ref, f"referral:{alias}"), (orjson.dumps(m).decode(), orjson.dumps(alias).decode())])
        erasure.pop("found")
        erasure.update(status="erased", clickhouse=touched, redis_keys=removed, accounts=len(ids),
                       kafka_gone_by_ms=int(time.time() * 1000) + KAFKA_KEEP_MS)
        await _save(erasure)
        await record_binding("erasure", f"erasure:{eid}", "", orjson.dumps(erasure).decode())
        counters["members_erased_total"] += len(ids)
        log.info("erasure %s: %d accounts now %s; ClickHouse rows %s; Redis keys %d; Kafka copies gone by %s",
                 eid, len(ids), erasure["pseudonym"], touched, removed,
                 dt.datetime.fromtimestamp(erasure["kafka_gone_by_ms"] / 1000, dt.UTC).date())
        return erasure
    finally:
        _running.discard(eid)


@app.timer(interval=10.0)
async def resume_erasures() -> None:
    """Erasures left half-way by a worker that died, taken up again by a worker that holds
    the ClickHouse store (the others leave them; every step is idempotent)."""
    try:
        rt = await runtime.started()
        if not rt.ledger.held:  # this worker does not hold the store
            return
        now_ms = int(time.time() * 1000)
        for erasure in await rt.balances.open_jobs("erasure"):
            if erasure["erasure_id"] not in _running \
                    and now_ms - int(erasure.get("beat_ms", 0)) > 60_000:
                log.warning("erasure %s left half-way: taken up again", erasure["erasure_id"])
                await run_erasure(erasure)
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("resuming erasures failed; the next round tries again")


def _answer(view: View, erasure: dict[str, Any]) -> Response:
    shown = {k: v for k, v in erasure.items() if k != "found"}  # what names them: not shown
    return json_response(view, shown, {"erased": 200, "erasing": 202}.get(erasure["status"], 409))


@app.page("/v1/admin/members/{member_id}/erase")
class EraseMember(View):
    """{"reason", "confirm": "<the member id again>"}: the member erased (a group admin)."""

    async def post(self, request: Request, member_id: str) -> Response:
        body = await json_body(request)
        if not is_valid_id(member_id) or body.get("confirm") != member_id:
            return error_response(self, 400, "confirm: the member id again (an erasure cannot be undone)", "confirm")
        reason = body.get("reason")
        if not isinstance(reason, str) or not 3 <= len(reason.strip()) <= 200:
            return error_response(self, 400, "reason: say why, 3-200 characters", "reason")
        rt = await runtime.started()
        key = rt.settings.pii_key.get_secret_value()
        if not key:
            return error_response(self, 503, "erasure needs LOYALTY_PII_KEY (the erasure's id is keyed by it)")
        eid = erasure_id(key, member_id)
        erasure = await rt.balances.erasure(eid)
        op = operator_of(request)
        if erasure is None:
            if await rt.balances.member(member_id) is None:
                return error_response(self, 404, f"no member {member_id}", "member_id")
            if (into := await rt.balances.alias_of(member_id)) is not None:
                return error_response(self, 409, f"{member_id} was merged into {into}: erase {into}, whose erasure "
                                      "includes this account", "member_id")
            _seq, state, _balance = await rt.balances.member_state(member_id)
            merged = [m["from"] for m in (orjson.loads(state or "{}").get("merges_in") or {}).values()
                      if m.get("undone") is None]
            now = dt.datetime.now(dt.UTC)
            erasure = {"erasure_id": eid, "pseudonym": f"erased-{secrets.token_hex(8)}", "status": "erasing",
                       "accounts": [member_id, *merged], "by": op.login, "role": op.role, "reason": reason.strip(),
                       "at_ms": int(now.timestamp() * 1000), "occurred_at": now.isoformat(timespec="milliseconds")}
            for n, m in enumerate(erasure["accounts"]):
                try:
                    await check_event(m, _event(erasure, m, n))
                except MergeRefused as exc:
                    raise Refused(409, f"{m} cannot be erased now: {exc.reason}", exc.field) from None
            await _save(erasure)
        if erasure["status"] == "erasing" and eid not in _running:
            erasure = await run_erasure(erasure)
        web_request(request)["audit"] = {
            "action": "member.erase", "member_id": erasure["pseudonym"], "target": eid,
            "before": None,
            "after": {k: erasure.get(k) for k in ("status", "clickhouse", "redis_keys", "refused")}}
        return _answer(self, erasure)
