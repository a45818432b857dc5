"""The back office in Redis: operator accounts (`op:<login>`, JSON; their durable copy is a
`bindings` row of kind `operator`), failed logins counted per login for the lock-out, logged
out sessions, and adjustments waiting for a second operator (`approval:<id>`, kind
`approval` in `bindings`)."""

from __future__ import annotations

import asyncio
import secrets
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson

import core_ext
from streams.operators import Operator
from streams.state.boards import BOARD_SHARDS
from streams.state.jobs import KEEP_S, MEMBER_LISTS, JobStore, index_entry
from streams.state.keys import OUTBOX_INDEX_SHARDS

APPROVAL_KEEP_S = 30 * 86_400
MERGE_KEEP_S = KEEP_S["merge"]
ERASURE_KEEP_S = KEEP_S["erasure"]


@dataclass(frozen=True)
class Named:
    """What names the members of an erasure, as ClickHouse had it before it was erased
    (streams/http/privacy.py `_what_names`): bound keys, payers (kind, id), plates, parking
    sessions and gateway routes (bindings keys), event ids, receipt ids and leaderboards."""

    keys: list[str]
    payers: list[tuple[str, str]]
    plates: list[str]
    parking: list[str]
    routes: list[str]
    event_ids: list[str]
    receipts: list[str]
    boards: list[str]


#: The fields of `Named`, as an erasure's record keeps them while it is erasing.
NAMED = tuple(Named.__dataclass_fields__)

# Moves an approval out of "pending" once: a second decision (a double click, two checkers
# at once) gets the first decision back and changes nothing.
_DECIDE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
if cjson.decode(cur)['status'] ~= 'pending' then return {0, cur} end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return {1, ARGV[1]}
"""


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Deletes a binding only while it still names this member (a plate's hash or an id's string).
_UNBIND = """
local t = redis.call('TYPE', KEYS[1])['ok']
local owner = false
if t == 'hash' then owner = redis.call('HGET', KEYS[1], 'member_id') elseif t == 'string' then
  owner = redis.call('GET', KEYS[1]) end
if owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


# Moves a binding from one member to another only while it names the first.
_REBIND = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  if redis.call('HGET', KEYS[1], 'member_id') ~= ARGV[1] then return 0 end
  redis.call('HSET', KEYS[1], 'member_id', ARGV[2])
  return 1
elseif t == 'string' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


# Replaces texts in a member's state (plain, not patterns), bumping its sequence number so
# a write computed from the state before retries. ARGV: old, new, old, new...
_REWRITE_STATE = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return 0 end
local changed = false
for i = 1, #ARGV, 2 do
  local out, pos = {}, 1
  while true do
    local a, b = string.find(s, ARGV[i], pos, true)
    if not a then break end
    out[#out + 1] = string.sub(s, pos, a - 1)
    out[#out + 1] = ARGV[i + 1]
    pos = b + 1
    changed = true
  end
  out[#out + 1] = string.sub(s, pos)
  s = table.concat(out)
end
if not changed then return 0 end
redis.call('HSET', KEYS[1], 'state', s)
redis.call('HINCRBY', KEYS[1], 'seq', 1)
return 1
"""


class OperatorStore(JobStore):
    async def unbind(self, key: str, member_id: str) -> bool:
        """Removes `<ns>:<key>` (a plate, an external id, a referral phone) if it is bound
        to `member_id`; False if it is not (another member's, or none)."""
        return bool(await self.redis.eval(_UNBIND, 1, f"{self.ns}:{key}", member_id))

    @asynccontextmanager
    async def rules_lock(self, hold_s: int = 30, wait_s: float = 15.0) -> AsyncIterator[None]:
        """One rules publish at a time in the group (its number is the last one's + 1)."""
        token, key = secrets.token_hex(8), self.rules_lock_key
        for _ in range(int(wait_s / 0.05)):
            if await self.redis.set(key, token, nx=True, ex=hold_s):
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError(f"another rules publish holds {key}; try again")
        try:
            yield
        finally:
            await self.redis.eval(_UNLOCK, 1, key, token)

    async def operator(self, login: str) -> Operator | None:
        raw = await self.redis.get(self.operator_key(login))
        return None if raw is None else Operator.from_json(raw)

    async def put_operator(self, op: Operator) -> None:
        await self.redis.sadd(self.operators_index_key, op.login)
        await self.redis.set(self.operator_key(op.login), op.to_json())

    async def add_operator(self, op: Operator) -> bool:
        """False if the login exists already."""
        await self.redis.sadd(self.operators_index_key, op.login)
        return bool(await self.redis.set(self.operator_key(op.login), op.to_json(), nx=True))

    async def operators(self) -> list[Operator]:
        """Every operator account, by login, read through the index of logins (not a scan
        of the keyspace)."""
        await self.index_once("operator", self.operator_key("*"), self._index_operator)
        logins = sorted(cast(set[str], await self.redis.smembers(self.operators_index_key)))
        if not logins:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for login in logins:
            pipe.get(self.operator_key(login))
        return [Operator.from_json(raw) for raw in await pipe.execute() if raw is not None]

    async def _index_operator(self, key: str, raw: bytes | str) -> None:
        await self.redis.sadd(self.operators_index_key, key[len(self.operator_key("")):])

    async def login_failures(self, login: str) -> tuple[int, int]:
        """Failed logins within the lock window and the seconds left of it."""
        key = self.login_failures_key(login)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = await pipe.execute()
        return int(count or 0), max(0, int(ttl))

    async def login_failed(self, login: str, window_s: int) -> int:
        """Counts a failure; the window starts at the first one."""
        key = self.login_failures_key(login)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, window_s, nx=True)
        count, _ = await pipe.execute()
        return int(count)

    async def clear_login_failures(self, login: str) -> None:
        await self.redis.delete(self.login_failures_key(login))

    async def revoke_session(self, sid: str, keep_s: int) -> None:
        await self.redis.set(self.revoked_session_key(sid), 1, ex=keep_s)

    async def session_revoked(self, sid: str) -> bool:
        return bool(await self.redis.exists(self.revoked_session_key(sid)))

    async def add_approval(self, approval: dict[str, Any]) -> dict[str, Any]:
        """Stores a pending approval once (by id); answers the one stored. It is in the
        index of approvals (scored by when it was asked) before its record exists."""
        key = self.approval_key(approval["approval_id"])
        at_ms = int(approval.get("requested_at_ms") or time.time() * 1000)
        await self.redis.zadd(self.approvals_index_key, {approval["approval_id"]: at_ms}, nx=True)
        # One command (SET NX GET): the approval answered is the one stored.
        body = orjson.dumps(approval)
        before = cast(str | None, await self.redis.set(key, body, nx=True, get=True, ex=APPROVAL_KEEP_S))
        return orjson.loads(body if before is None else before)  # type: ignore[no-any-return]

    async def approval(self, approval_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.approval_key(approval_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def decide_approval(self, approval_id: str, decided: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        """(True, it) if this call moved the approval out of pending; (False, as stored)
        if it had been decided already; (False, None) if there is none."""
        reply = await self.redis.eval(_DECIDE, 1, self.approval_key(approval_id), orjson.dumps(decided))
        if not reply:
            return False, None
        return bool(int(reply[0])), orjson.loads(reply[1])

    async def approvals(self) -> list[dict[str, Any]]:
        """The approvals of the last 30 days, newest first, read through their index (not a
        scan of the keyspace: the console's member page asks on every view)."""
        await self.index_once("approval", self.approval_key("*"), self._index_approval)
        index, now = self.approvals_index_key, int(time.time() * 1000)
        await self.redis.zremrangebyscore(index, "-inf", now - APPROVAL_KEEP_S * 1000)
        scored: list[tuple[str | bytes, float]] = await self.redis.zrevrange(  # type: ignore[assignment]
            index, 0, -1, withscores=True)
        # A record gone (erased) drops its entry; a fresh one may be a save under way.
        out = await self.indexed_records(index, [index_entry(e) for e in scored], now, self.approval_key,
                                         lambda approval: True)
        return sorted(out, key=lambda a: a.get("requested_at_ms", 0), reverse=True)

    async def _index_approval(self, key: str, raw: bytes | str) -> None:
        approval = orjson.loads(raw)
        at_ms = int(approval.get("requested_at_ms") or time.time() * 1000)
        await self.redis.zadd(self.approvals_index_key, {approval["approval_id"]: at_ms}, nx=True)

    async def rebind(self, key: str, from_member: str, to_member: str) -> bool:
        """Moves `<ns>:<key>` (a plate, an external id) from one member to another while it
        names the first; False if it does not."""
        return bool(await self.redis.eval(_REBIND, 1, f"{self.ns}:{key}", from_member, to_member))

    async def alias_of(self, member_id: str) -> str | None:
        """The account a merged account's id now answers for, or None."""
        return cast(str | None, await self.redis.get(self.alias_key(member_id)))

    async def set_alias(self, member_id: str, into: str | None) -> None:
        if into is None:
            await self.redis.delete(self.alias_key(member_id))
        else:
            await self.redis.set(self.alias_key(member_id), into)

    async def merge(self, merge_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.merge_key(merge_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def save_merge(self, merge: dict[str, Any]) -> None:
        await self.save_job("merge", merge["merge_id"], merge)

    async def merges(self) -> list[dict[str, Any]]:
        return await self.jobs("merge")

    async def event_records(self, member_id: str) -> dict[str, str]:
        """A member's applied-event records (id -> record), as the accrual wrote them."""
        return cast(dict[str, str], await self.redis.hgetall(self.records_key(member_id)))

    async def erasure(self, erasure_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.erasure_key(erasure_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def save_erasure(self, erasure: dict[str, Any]) -> None:
        await self.save_job("erasure", erasure["erasure_id"], erasure)

    async def outboxes_pending(self, member_ids: list[str]) -> bool:
        """Whether any of these members has ledger rows not yet sent (its outbox)."""
        for m in member_ids:  # one slot per member on a cluster
            if await self.redis.exists(self.outbox_key(m)):
                return True
        return False

    async def erase_members(self, ids: list[str], pseudonym: str, named: Named) -> int:
        """A personal data erasure in Redis (streams/http/privacy.py): the members' keys,
        their bindings (while still theirs), aliases, guest payments, parking sessions,
        gateway routes, schedules, leaderboard entries, held refunds, merge records and
        approvals; audience sends, receipt claims and the claims of their events name the
        pseudonym instead. Every key is named by what ClickHouse said of them (`named`) or
        by an index: nothing scans the keyspace. Returns keys and entries removed or rewritten."""
        r, n = self.redis, 0
        members = set(ids)
        names = [*ids, *[e for _, e in named.payers]]
        for start in range(0, len(named.event_ids), 500):
            page = [self.event_claim_key(e) for e in named.event_ids[start:start + 500]]
            pipe = r.pipeline(transaction=False)  # GETs, not MGET: on a cluster the keys are in many slots
            for key in page:
                pipe.get(key)
            for key, claimant in zip(page, await pipe.execute(), strict=True):
                if claimant and any(x in claimant for x in names):
                    n += bool(await r.set(key, pseudonym, xx=True, keepttl=True))
        # One pass over each index whose entries start with a member ("member<TAB>...").
        held = self.held_key  # type: ignore[attr-defined]  # HeldRefundStore's, in the same store
        for index in (self.mall_orders_key, held):
            async for entry, _score in r.zscan_iter(index, count=1000):
                member, _, payment = entry.partition("\t")
                if member in members:
                    n += await r.zrem(index, entry)
                    if index == held:  # the refunds held for that payment
                        n += await r.delete(self.held_refunds_key(member, payment))  # type: ignore[attr-defined]
        for m in ids:
            n += await r.delete(self.member_key(m), self.records_key(m), self.outbox_key(m), self.history_key(m))
            n += await r.delete(self.alias_key(m))  # a slot of its own
            n += await r.zrem(self.tier_reviews_key, m) + await r.zrem(self.wallet_checks_key, m)
            n += await r.zrem(self.outbox_index_key(zlib.crc32(m.encode()) % OUTBOX_INDEX_SHARDS), m)
            shard = core_ext.board_shard(m, BOARD_SHARDS)  # a member's score is in one shard of a board
            pipe = r.pipeline(transaction=False)  # one slot a board: no transaction
            for board in named.boards:
                scores, versions = self.board_keys(board, shard)
                pipe.zrem(scores, m)
                pipe.hdel(versions, m)
            n += sum(int(x) for x in await pipe.execute()) if named.boards else 0
        for key in named.keys:
            for m in ids:
                n += int(await self.unbind(key, m))
        for kind, ext in named.payers:
            n += await r.delete(self.guest_key(kind, ext))
        for key in [*named.routes, *named.parking]:  # bindings rows' keys, without the namespace
            n += await r.delete(f"{self.ns}:{key}")
        for merge in await self.merges():
            if merge.get("from") in members or merge.get("into") in members:
                n += await r.delete(self.merge_key(merge["merge_id"]))
        for approval in await self.approvals():
            if approval.get("member_id") in members:
                n += await r.delete(self.approval_key(approval["approval_id"]))
                await r.zrem(self.approvals_index_key, approval["approval_id"])
        for receipt_id in named.receipts:
            key = self.receipt_claim_key(receipt_id)
            holder = await r.get(key)  # the receipt stays claimed (not earned twice), by the pseudonym
            if holder in members:
                n += bool(await r.set(key, pseudonym, xx=True, keepttl=True))
        for kind in MEMBER_LISTS:
            for send in await self.jobs(kind):
                job_id = send["send_id"] if kind == "audience-send" else f"{send['campaign']}:{send['run']}"
                older = "members" in send  # saved with its members in it: moved out, then saved without
                sent_to = await self.job_members(kind, job_id, send)
                if older:
                    await r.set(self.job_key(kind, job_id), orjson.dumps(send), keepttl=True)
                if members & set(sent_to):
                    await self.set_job_members(kind, job_id, [pseudonym if m in members else m for m in sent_to])
                    n += 1
        return n

    async def rewrite_mentions(self, member_id: str, pairs: list[tuple[str, str]]) -> int:
        """Texts naming an erased member replaced in another member's event records (the
        field names), recent movements and state (an inviter's referral). Returns 1 if any."""
        r, n = self.redis, 0
        records = self.records_key(member_id)
        for old, new in pairs:
            rec = await r.hget(records, old)
            if rec is not None:
                await r.hset(records, new, rec)
                await r.hdel(records, old)
                n = 1
        history = self.history_key(member_id)
        entries = cast(list[str], await r.lrange(history, 0, -1))
        if any(old in e for e in entries for old, _ in pairs):
            for old, new in pairs:
                entries = [e.replace(old, new) for e in entries]
            ttl = await r.ttl(history)
            pipe = r.pipeline(transaction=True)
            pipe.delete(history)
            pipe.rpush(history, *entries)
            if ttl > 0:
                pipe.expire(history, ttl)
            await pipe.execute()
            n = 1
        flat = [x for pair in pairs for x in pair]
        n |= int(await r.eval(_REWRITE_STATE, 1, self.member_key(member_id), *flat))
        return n
