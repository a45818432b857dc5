"""The back office in Redis: operator accounts (`op:<login>`, JSON; their durable copy is a
`bindings` row of kind `operator`), failed logins counted per login for the lock-out, logged
out sessions, and adjustments waiting for a second operator (`approval:<id>`, kind
`approval` in `bindings`)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from streams.operators import Operator
from streams.state.base import StoreBase

APPROVAL_KEEP_S = 30 * 86_400
#: A merge's record is kept past the longest undo window (LOYALTY_MERGE_UNDO_DAYS, 60 at most).
MERGE_KEEP_S = 67 * 86_400

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


class OperatorStore(StoreBase):
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
        await self.redis.set(self.operator_key(op.login), op.to_json())

    async def add_operator(self, op: Operator) -> bool:
        """False if the login exists already."""
        return bool(await self.redis.set(self.operator_key(op.login), op.to_json(), nx=True))

    async def operators(self) -> list[Operator]:
        out = []
        async for key in self.redis.scan_iter(match=self.operator_key("*"), count=500):
            raw = await self.redis.get(key)
            if raw is not None:
                out.append(Operator.from_json(raw))
        return sorted(out, key=lambda o: o.login)

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
        """Stores a pending approval once (by id); answers the one stored."""
        key = self.approval_key(approval["approval_id"])
        await self.redis.set(key, orjson.dumps(approval), nx=True, ex=APPROVAL_KEEP_S)
        return orjson.loads(await self.redis.get(key))  # type: ignore[no-any-return]

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
        out = []
        async for key in self.redis.scan_iter(match=self.approval_key("*"), count=500):
            raw = await self.redis.get(key)
            if raw is not None:
                out.append(orjson.loads(raw))
        return sorted(out, key=lambda a: a.get("requested_at_ms", 0), reverse=True)

    async def rebind(self, key: str, from_member: str, to_member: str) -> bool:
        """Moves `<ns>:<key>` (a plate, an external id) from one member to another while it
        names the first; False if it does not."""
        return bool(await self.redis.eval(_REBIND, 1, f"{self.ns}:{key}", from_member, to_member))

    async def alias_of(self, member_id: str) -> str | None:
        """The account a merged account's id now answers for, or None."""
        return await self.redis.get(self.alias_key(member_id))  # type: ignore[no-any-return]

    async def set_alias(self, member_id: str, into: str | None) -> None:
        if into is None:
            await self.redis.delete(self.alias_key(member_id))
        else:
            await self.redis.set(self.alias_key(member_id), into)

    async def merge(self, merge_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.merge_key(merge_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def save_merge(self, merge: dict[str, Any]) -> None:
        await self.redis.set(self.merge_key(merge["merge_id"]), orjson.dumps(merge), ex=MERGE_KEEP_S)

    async def merges(self) -> list[dict[str, Any]]:
        out = []
        async for key in self.redis.scan_iter(match=self.merge_key("*"), count=500):
            raw = await self.redis.get(key)
            if raw is not None:
                out.append(orjson.loads(raw))
        return out

    async def event_records(self, member_id: str) -> dict[str, str]:
        """A member's applied-event records (id -> record), as the accrual wrote them."""
        return await self.redis.hgetall(self.records_key(member_id))  # type: ignore[no-any-return]
