"""Merging two accounts of one person from the console, and undoing it (docs/back-office.md).

A merge of `from` into `into` is two member events applied by the accrual worker in order
with each member's other events (core_ext/src/merge.rs): `merge_out` on `from` takes its
wallet (lots with their months, pending points, qualification, tier, active coupons,
debts) and marks it merged; `merge_in` on `into` adds it (the better tier wins) with the
merged account's event records, so its payments' refunds still find them. Then the
merged account's external ids and plates are bound to `into`, and `from` answers as an
alias of `into`: its later events are applied to `into` (the worker re-addresses them),
its member API answers with `into`'s account. Stored value, open holds and pending partner
exchanges are not merged: the merge is refused until they are spent or ended.

The merge's record (`merge:<id>` in Redis, kind `merge` in the bindings table) says how far
it went; each step is idempotent (the events by their ids, the bindings by their owner),
so a merge or undo that stopped half-way (a worker killed) is taken up again by the
leader's timer, and asking again with the same merge id answers the same merge.

An undo (a group admin, within LOYALTY_MERGE_UNDO_DAYS) is the pair the other way:
`unmerge_out` on `into` takes back what the merge brought (points spent since come from
its other points; refused if it has too few), `unmerge_in` gives it to `from`, the
bindings move back and the alias ends.

POST /v1/admin/members/{member_id}/merge   {"into", "reason", "merge_id"?}: merged (200)
GET  /v1/admin/merges/{merge_id}           the merge's record
POST /v1/admin/merges/{merge_id}/undo      {"reason"}: undone (200)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

import core_ext
from streams.app import app, leader_timer, member_events_topic, record_binding, runtime
from streams.errors import InputError
from streams.http.common import Refused, error_response, json_response, web_request
from streams.http.console import json_body, member_in_scope, operator_of
from streams.inputs import is_valid_id
from streams.metrics import counters

log = logging.getLogger(__name__)

#: How long one half of a merge may take to be applied before the request answers 202
#: (the leader's timer finishes it).
APPLY_WAIT_S = 20.0
#: A merge or undo whose record has not moved for this long is taken up again.
STALE_MS = 60_000
MOVABLE = ("identity", "plate")
#: Merges and undos this process is running now (the resume timer leaves them alone).
_running: set[str] = set()


class MergeRefused(InputError):
    """A merge or undo its member's state refuses now (the field and the core's reason)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def default_merge_id(from_member: str, into: str) -> str:
    return "mg-" + hashlib.sha256(f"{from_member}\0{into}".encode()).hexdigest()[:20]


def _event(kind: str, event_id: str, member_id: str, other: str, merge: dict[str, Any],
           bundle: Any = None, records: dict[str, str] | None = None) -> bytes:
    body: dict[str, Any] = {"event_id": event_id, "type": kind, "occurred_at": merge["occurred_at"],
                            "member_id": member_id, "merge_id": merge["merge_id"], "other_member_id": other}
    if bundle is not None:
        body["bundle"] = bundle
    if records:
        body["records"] = records
    return orjson.dumps(body)


async def _state(member_id: str) -> dict[str, Any]:
    rt = await runtime.started()
    _seq, state, _balance = await rt.balances.member_state(member_id)
    return orjson.loads(state) if state else {}


async def check_event(member_id: str, event: bytes) -> None:
    """MergeRefused if the event would not apply to the member's state now."""
    rt = await runtime.started()
    _seq, state, _balance = await rt.balances.member_state(member_id)
    try:
        core_ext.check_member_event(rt.rules, state, event, int(time.time() * 1000))
    except (core_ext.RejectedEventError, core_ext.InvalidEventError) as exc:
        raise MergeRefused(str(getattr(exc, "field", "")), str(getattr(exc, "reason", exc))) from None


async def send_and_wait(member_id: str, event: bytes) -> bool:
    """Sends a merge event (Kafka key: its member) and waits until its member's record of it
    is there: True once applied; False if not within APPLY_WAIT_S, or MergeRefused if its
    member's state refuses it now (checked first, and again while waiting)."""
    rt = await runtime.started()
    event_id = orjson.loads(event)["event_id"]
    if await rt.balances.event_record(member_id, event_id):
        return True
    await check_event(member_id, event)
    fut = await member_events_topic.send(key=member_id.encode(), value=event, force=True)
    await fut
    deadline = time.monotonic() + APPLY_WAIT_S
    checked_at = time.monotonic()
    while time.monotonic() < deadline:
        if await rt.balances.event_record(member_id, event_id):
            return True
        if time.monotonic() - checked_at > 2.0:
            checked_at = time.monotonic()
            try:
                await check_event(member_id, event)  # a state that changed since (a hold taken) refuses it
            except MergeRefused:
                if await rt.balances.event_record(member_id, event_id):
                    return True  # applied between the two looks
                raise
        await asyncio.sleep(0.05)
    return False


async def _save(merge: dict[str, Any]) -> None:
    rt = await runtime.started()
    merge["beat_ms"] = int(time.time() * 1000)
    await rt.balances.save_merge(merge)
    await record_binding("merge", f"merge:{merge['merge_id']}", merge["from"], orjson.dumps(merge).decode())


async def _move_bindings(keys: list[str], from_member: str, to_member: str) -> list[str]:
    rt = await runtime.started()
    moved = []
    for key in keys:
        if await rt.balances.rebind(key, from_member, to_member):
            await record_binding("plate" if key.startswith("plate:") else "identity", key, to_member,
                                 (await rt.balances.plate_binding(key[6:])).get("auto_pay", "0")
                                 if key.startswith("plate:") else "")
            moved.append(key)
        elif await rt.balances.rebind(key, to_member, to_member):
            moved.append(key)  # moved by an earlier run of this step
    return moved


async def run_merge(merge: dict[str, Any]) -> dict[str, Any]:
    """Takes a merge as far as it goes: "merged", or "merging" if a half is not applied yet
    (the leader's timer goes on with it), or "refused" with the reason. Idempotent."""
    rt = await runtime.started()
    mid, src, dst = merge["merge_id"], merge["from"], merge["into"]
    _running.add(mid)
    try:
        if merge["status"] == "merging":
            try:
                out = _event("merge_out", f"merge-out:{mid}", src, dst, merge)
                if not await send_and_wait(src, out):
                    await _save(merge)
                    return merge
            except MergeRefused as exc:
                merge.update(status="refused", refused={"field": exc.field, "reason": exc.reason})
                await _save(merge)
                log.info("merge %s of %s into %s refused: %s: %s", mid, src, dst, exc.field, exc.reason)
                return merge
            merged = (await _state(src)).get("merged") or {}
            if merged.get("merge_id") != mid:
                raise RuntimeError(f"merge {mid}: {src} is not marked merged by it after merge_out")
            records = {k: v for k, v in (await rt.balances.event_records(src)).items()}
            inn = _event("merge_in", f"merge-in:{mid}", dst, src, merge, merged["bundle"], records)
            try:
                if not await send_and_wait(dst, inn):
                    await _save(merge)
                    return merge
            except MergeRefused as exc:
                # The kept account refuses (merged itself meanwhile): the points go back.
                back = _event("unmerge_in", f"merge-back:{mid}", src, dst, merge, merged["bundle"])
                await send_and_wait(src, back)
                merge.update(status="refused", refused={"field": exc.field, "reason": exc.reason})
                await _save(merge)
                return merge
            bindings = await rt.ledger.query("member_bindings", {"member_id": src})
            keys = sorted({r["key"] for r in bindings if r["kind"] in MOVABLE} | set(merge.get("moved", [])))
            merge["moved"] = await _move_bindings(keys, src, dst)
            await rt.balances.set_alias(src, dst)
            await record_binding("alias", f"alias:{src}", dst)
            merge.update(status="merged", points=_points(merged["bundle"]))
            await _save(merge)
            counters["merges_total"] += 1
            log.info("merge %s: %s into %s (%d points, %d bindings moved) by %s", mid, src, dst, merge["points"],
                     len(merge["moved"]), merge["by"])
        return merge
    finally:
        _running.discard(mid)


def _points(bundle: dict[str, Any]) -> int:
    lots = sum(int(lot[1]) for lot in bundle.get("lots", []))
    return lots + sum(int(p["points"]) for p in bundle.get("pending", [])) - int(bundle.get("neg", 0))


async def run_undo(merge: dict[str, Any]) -> dict[str, Any]:
    """Takes an undo as far as it goes: "undone", "undoing" (the timer goes on), or back to
    "merged" with `undo_refused` saying why. Idempotent."""
    rt = await runtime.started()
    mid, src, dst = merge["merge_id"], merge["from"], merge["into"]
    _running.add(mid)
    try:
        bundle = ((await _state(src)).get("merged") or {}).get("bundle")
        if bundle is not None:
            try:
                out = _event("unmerge_out", f"unmerge-out:{mid}", dst, src, merge, bundle)
                if not await send_and_wait(dst, out):
                    await _save(merge)
                    return merge
            except MergeRefused as exc:
                merge.update(status="merged", undo_refused={"field": exc.field, "reason": exc.reason})
                await _save(merge)
                return merge
            back = (((await _state(dst)).get("merges_in") or {}).get(mid) or {}).get("undone")
            if back is None:
                raise RuntimeError(f"undo of merge {mid}: {dst} has no record of what it gave back")
            if not await send_and_wait(src, _event("unmerge_in", f"unmerge-in:{mid}", src, dst, merge, back)):
                await _save(merge)
                return merge
            merge["points_back"] = _points(back)
        await _move_bindings(list(merge.get("moved", [])), dst, src)
        await rt.balances.set_alias(src, None)
        await record_binding("alias", f"alias:{src}", "")
        merge["status"] = "undone"
        await _save(merge)
        counters["merges_undone_total"] += 1
        log.info("merge %s undone: %s separate from %s again, by %s", mid, src, dst, merge.get("undone_by"))
        return merge
    finally:
        _running.discard(mid)


@leader_timer(10.0)
async def resume_merges() -> None:
    """Merges and undos left half-way by a worker that died, taken up again."""
    try:
        rt = await runtime.started()
        now_ms = int(time.time() * 1000)
        for merge in await rt.balances.open_jobs("merge"):
            if merge["merge_id"] not in _running \
                    and now_ms - int(merge.get("beat_ms", 0)) > STALE_MS:
                log.warning("merge %s left %s: taken up again", merge["merge_id"], merge["status"])
                await (run_merge(merge) if merge["status"] == "merging" else run_undo(merge))
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("resuming merges failed; the next round tries again")


def _answer(view: View, merge: dict[str, Any]) -> Response:
    status = {"merged": 200, "undone": 200, "merging": 202, "undoing": 202}.get(merge["status"], 409)
    if merge.get("undo_refused") and merge["status"] == "merged":
        status = 409
    return json_response(view, merge, status)


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not 3 <= len(reason.strip()) <= 200:
        raise Refused(400, "reason: say why, 3-200 characters", "reason")
    return reason.strip()


@app.page("/v1/admin/members/{member_id}/merge")
class MergeMember(View):
    """{"into": "<member kept>", "reason", "merge_id"?}: the member merged into `into`."""

    async def post(self, request: Request, member_id: str) -> Response:
        body = await json_body(request)
        into, merge_id = body.get("into"), body.get("merge_id")
        if not is_valid_id(member_id) or not isinstance(into, str) or not is_valid_id(into) or into == member_id:
            return error_response(self, 400, "into: the id of the other account of this person", "into")
        if merge_id is None:
            merge_id = default_merge_id(member_id, into)
        if not isinstance(merge_id, str) or not is_valid_id(merge_id) or len(merge_id) > 48:
            return error_response(self, 400, "merge_id: an id of 1-48 characters", "merge_id")
        reason = _reason(body)
        await member_in_scope(request, member_id)
        await member_in_scope(request, into)
        rt = await runtime.started()
        op = operator_of(request)
        merge = await rt.balances.merge(merge_id)
        if merge is not None:
            if (merge["from"], merge["into"]) != (member_id, into):
                return error_response(self, 409, f"merge {merge_id} is of {merge['from']} into {merge['into']}",
                                      "merge_id")
            if merge["status"] == "merging" and merge_id not in _running:
                merge = await run_merge(merge)
            return _answer(self, merge)
        for m, what in ((member_id, "member_id"), (into, "into")):
            if await rt.balances.member(m) is None:
                return error_response(self, 404, f"no member {m}", what)
        if (target := await rt.balances.alias_of(into)) is not None:
            return error_response(self, 409, f"{into} was merged into {target}: merge into {target}", "into")
        now = dt.datetime.now(dt.UTC)
        merge = {"merge_id": merge_id, "from": member_id, "into": into, "reason": reason, "by": op.login,
                 "role": op.role, "at_ms": int(now.timestamp() * 1000), "status": "merging",
                 "occurred_at": now.isoformat(timespec="milliseconds"), "moved": []}
        try:
            await check_event(member_id, _event("merge_out", f"merge-out:{merge_id}", member_id, into, merge))
        except MergeRefused as exc:
            return error_response(self, 409, f"{member_id} cannot be merged now: {exc.reason}", exc.field)
        before = {"from": await _state(member_id), "into": await _state(into)}
        await _save(merge)
        merge = await run_merge(merge)
        web_request(request)["audit"] = {
            "action": "member.merge", "member_id": member_id, "target": into,
            "before": {"from_balance": _points_of(before["from"]),
                       "into_balance": _points_of(before["into"]),
                       "from_tier": before["from"].get("tier"),
                       "into_tier": before["into"].get("tier")},
            "after": {k: merge.get(k) for k in ("merge_id", "status", "points", "moved", "refused")}}
        return _answer(self, merge)


def _points_of(state: dict[str, Any]) -> int:
    return _points({"lots": state.get("lots", []), "pending": state.get("pending", []), "neg": state.get("neg", 0)})


@app.page("/v1/admin/merges/{merge_id}")
class MergeStatus(View):
    async def get(self, request: Request, merge_id: str) -> Response:
        if not is_valid_id(merge_id):
            return error_response(self, 400, "merge_id: invalid", "merge_id")
        rt = await runtime.started()
        merge = await rt.balances.merge(merge_id)
        if merge is None:
            return error_response(self, 404, f"no merge {merge_id} (records are kept 67 days)", "merge_id")
        await member_in_scope(request, merge["into"])
        return json_response(self, merge)


@app.page("/v1/admin/merges/{merge_id}/undo")
class UndoMerge(View):
    """{"reason"}: the merge undone (a group admin, within LOYALTY_MERGE_UNDO_DAYS)."""

    async def post(self, request: Request, merge_id: str) -> Response:
        body = await json_body(request)
        if not is_valid_id(merge_id):
            return error_response(self, 400, "merge_id: invalid", "merge_id")
        reason = _reason(body)
        rt = await runtime.started()
        merge = await rt.balances.merge(merge_id)
        if merge is None:
            return error_response(self, 404, f"no merge {merge_id}", "merge_id")
        if merge["status"] == "undone":
            return _answer(self, merge)
        if merge["status"] not in ("merged", "undoing"):
            return error_response(self, 409, f"merge {merge_id} is {merge['status']}: nothing to undo", "merge_id")
        window_ms = rt.settings.merge_undo_days * 86_400_000
        if merge["status"] == "merged" and int(time.time() * 1000) - int(merge["at_ms"]) > window_ms:
            return error_response(self, 409, f"merge {merge_id} is older than LOYALTY_MERGE_UNDO_DAYS "
                                  f"({rt.settings.merge_undo_days}): it can no longer be undone", "merge_id")
        op = operator_of(request)
        if merge["status"] == "merged":
            merge.update(status="undoing", undone_by=op.login, undo_reason=reason, undo_refused=None)
            await _save(merge)
        if merge_id not in _running:
            merge = await run_undo(merge)
        web_request(request)["audit"] = {
            "action": "member.merge-undo", "member_id": merge["from"], "target": merge["into"],
            "before": {"status": "merged"},
            "after": {k: merge.get(k) for k in ("merge_id", "status", "points_back", "undo_refused")}}
        return _answer(self, merge)
