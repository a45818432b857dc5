"""Refunds held until their payment is applied (a refund can reach the worker before its
payment): a list per (member, payment), an index scored by deadline, and the member's
`held` count that tells the accrual to look."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from streams.state.base import StoreBase


class HeldRefundStore(StoreBase):
    """Refunds waiting for their payment."""

    @property
    def held_key(self) -> str:
        """Every (member, payment) with refunds held, scored by the deadline of the first."""
        return f"{self.ns}:held"

    async def hold_refund(self, member_id: str, payment_id: str, body: bytes, deadline_ms: int) -> None:
        """Holds a refund until its payment is applied, at most until `deadline_ms` (the
        first held refund of a payment sets it for all of them); the member's `held` count
        tells the accrual to look (one transaction: both keys are the member's). The index
        entry goes first, so a crash between leaves an entry whose list is empty, which the
        expiry drops; the list itself expires a day after the deadline whatever happens."""
        await self.redis.zadd(self.held_key, {f"{member_id}\t{payment_id}": deadline_ms}, nx=True)
        pipe = self.redis.pipeline(transaction=True)
        key = self.held_refunds_key(member_id, payment_id)
        pipe.rpush(key, body)
        pipe.hincrby(self.member_key(member_id), "held", 1)
        pipe.pexpireat(key, deadline_ms + 86_400_000)
        await pipe.execute()

    async def held_due(self, now_ms: int, limit: int = 500) -> list[tuple[str, str, list[str]]]:
        """(member, payment, held bodies) whose deadline has passed, oldest first."""
        due = cast(list[str], await self.redis.zrangebyscore(self.held_key, "-inf", now_ms, start=0, num=limit))
        pairs = [tuple(entry.split("\t", 1)) for entry in due]
        pipe = self.redis.pipeline(transaction=False)
        for member_id, payment_id in pairs:
            pipe.lrange(self.held_refunds_key(member_id, payment_id), 0, -1)
        return [(m, p, bodies) for (m, p), bodies in zip(pairs, await pipe.execute(), strict=True)]

    async def held_list(self, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """How many payments have refunds held, and the oldest `limit` of them."""
        total = await self.redis.zcard(self.held_key)
        entries = cast(list[tuple[str, float]], await self.redis.zrange(self.held_key, 0, limit - 1, withscores=True))
        pipe = self.redis.pipeline(transaction=False)
        for entry, _ in entries:
            pipe.llen(self.held_refunds_key(*entry.split("\t", 1)))
        counts = await pipe.execute() if entries else []
        out = []
        for (entry, deadline), n in zip(entries, counts, strict=True):
            member_id, payment_id = entry.split("\t", 1)
            out.append({"member_id": member_id, "payment_id": payment_id, "refunds": n,
                        "deadline_ms": int(deadline)})
        return total, out

    async def oldest_held_deadline_ms(self) -> int | None:
        first = await self.redis.zrange(self.held_key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def held_refunds(self, paid: Sequence[tuple[str, str]]) -> list[tuple[str, str, list[str]]]:
        """Refunds held for these (member, payment) pairs: one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for member_id, payment_id in paid:
            pipe.lrange(self.held_refunds_key(member_id, payment_id), 0, -1)
        return [(m, p, held) for (m, p), held in zip(paid, await pipe.execute(), strict=True) if held]

    async def release_held(self, member_id: str, payment_id: str, count: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.held_refunds_key(member_id, payment_id))
        pipe.hincrby(self.member_key(member_id), "held", -count)
        await pipe.execute()
        await self.redis.zrem(self.held_key, f"{member_id}\t{payment_id}")
