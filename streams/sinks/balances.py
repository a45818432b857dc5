"""Member balances in Redis: the read of a batch's context and the idempotent apply.

Keys are hash-tagged by member (`ly:m:{m-1}`, `ly:ev:{m-1}:tx-9`) so that every key
one event touches lives in one Redis Cluster slot. Each movement is applied by one
Lua script that checks the event id and moves the balance in the same step; the
event's record keeps the exact ledger row, so a replay re-emits the same row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# KEYS: member hash, event hash, refunded payment's hash (refunds only)
# ARGV: points delta, ledger row, amount_fen, kind, refund amount, clawback points
# Integers stay strings and go straight to HINCRBY: no Lua doubles on point paths.
APPLY_MOVEMENT_LUA = """
local prior = redis.call('HGET', KEYS[2], 'row')
if prior then return {0, prior} end
local delta = ARGV[1]
redis.call('HINCRBY', KEYS[1], 'balance', delta)
if string.sub(delta, 1, 1) == '-' then
  redis.call('HINCRBY', KEYS[1], 'clawed_back', string.sub(delta, 2))
else
  redis.call('HINCRBY', KEYS[1], 'earned', delta)
end
redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('HSET', KEYS[2], 'row', ARGV[2], 'amount', ARGV[3], 'points', delta,
           'kind', ARGV[4], 'refunded_amount', 0, 'refunded_points', 0)
if ARGV[4] == 'refund' then
  redis.call('HINCRBY', KEYS[3], 'refunded_amount', ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'refunded_points', ARGV[6])
end
return {1, ARGV[2]}
"""

Original = tuple[int, int, int, int]


@dataclass(frozen=True)
class BatchContext:
    tiers: list[str | None]
    originals: list[Original | None]
    applied: list[bool]


@dataclass(frozen=True)
class Movement:
    """One outcome of the core to apply: `kind` is "payment" or "refund"."""

    member_id: str
    event_id: str
    kind: str
    points: int
    row: str
    amount_fen: int
    refund_of: str | None
    refund_amount_fen: int
    clawback_points: int


class BalanceStore:
    """Balances, tiers and applied-event records of members, in Redis."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.ns = namespace
        self.redis: aioredis.Redis = aioredis.from_url(url, decode_responses=True)
        self._apply = self.redis.register_script(APPLY_MOVEMENT_LUA)

    async def setup(self) -> None:
        """Connects and pings, so a bad URL fails at start rather than on the first batch."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    def member_key(self, member_id: str) -> str:
        return f"{self.ns}:m:{{{member_id}}}"

    def event_key(self, member_id: str, event_id: str) -> str:
        return f"{self.ns}:ev:{{{member_id}}}:{event_id}"

    async def read_context(self, keys: Sequence[tuple[str | None, str | None, str | None]]) -> BatchContext:
        """One pipeline: tier, applied flag and refunded payment for every valid event."""
        pipe = self.redis.pipeline(transaction=False)
        layout: list[tuple[bool, bool]] = []
        for event_id, member_id, refund_of in keys:
            if event_id is None or member_id is None:
                layout.append((False, False))
                continue
            pipe.hget(self.member_key(member_id), "tier")
            pipe.exists(self.event_key(member_id, event_id))
            if refund_of is not None:
                pipe.hmget(
                    self.event_key(member_id, refund_of),
                    ["kind", "amount", "points", "refunded_amount", "refunded_points"],
                )
            layout.append((True, refund_of is not None))
        replies = await pipe.execute() if len(pipe) else []
        tiers: list[str | None] = []
        originals: list[Original | None] = []
        applied: list[bool] = []
        i = 0
        for valid, is_refund in layout:
            if not valid:
                tiers.append(None)
                originals.append(None)
                applied.append(False)
                continue
            tiers.append(replies[i])
            applied.append(bool(replies[i + 1]))
            i += 2
            original: Original | None = None
            if is_refund:
                kind, amount, points, r_amount, r_points = replies[i]
                i += 1
                if kind == "payment" and amount is not None:
                    original = (int(amount), int(points), int(r_amount or 0), int(r_points or 0))
            originals.append(original)
        return BatchContext(tiers, originals, applied)

    async def apply(self, movements: Sequence[Movement]) -> list[tuple[bool, str]]:
        """Applies each movement once; returns (newly_applied, canonical ledger row) per movement."""
        if not movements:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for m in movements:
            keys = [self.member_key(m.member_id), self.event_key(m.member_id, m.event_id)]
            if m.refund_of is not None:
                keys.append(self.event_key(m.member_id, m.refund_of))
            args = [m.points, m.row, m.amount_fen, m.kind, m.refund_amount_fen, m.clawback_points]
            await self._apply(keys=keys, args=args, client=pipe)
        replies = await pipe.execute()
        return [(bool(int(flag)), row) for flag, row in replies]

    async def stored_rows(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ledger rows kept for already-applied (member_id, event_id) pairs."""
        if not pairs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for member_id, event_id in pairs:
            pipe.hget(self.event_key(member_id, event_id), "row")
        return list(await pipe.execute())

    async def member(self, member_id: str) -> dict[str, str] | None:
        data = await self.redis.hgetall(self.member_key(member_id))
        return data or None

    async def set_tier(self, member_id: str, tier: str) -> None:
        await self.redis.hset(self.member_key(member_id), "tier", tier)

    async def balances(self) -> dict[str, int]:
        """Every member's balance (SCAN, then one pipeline per page): for reconciliation."""
        out: dict[str, int] = {}
        prefix = f"{self.ns}:m:{{"
        async for batch in _scan_pages(self.redis, f"{self.ns}:m:*"):
            pipe = self.redis.pipeline(transaction=False)
            for key in batch:
                pipe.hget(key, "balance")
            for key, value in zip(batch, await pipe.execute(), strict=True):
                out[key[len(prefix) : -1]] = int(value or 0)
        return out


async def _scan_pages(client: aioredis.Redis, pattern: str, count: int = 1000):  # type: ignore[no-untyped-def]
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=count)
        if keys:
            yield keys
        if cursor == 0:
            break
