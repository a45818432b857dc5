"""The points mall's orders to collect, indexed by their deadline (`mall-orders`, a sorted
set of "member<TAB>order" by the time the order expires if not collected), and the claims
of receipt numbers (`receipt:<receipt id>` -> the member who submitted it first: a receipt
earns for one member only), and the members' events' waitlists (`event-wait:<event>`, by the
time each joined) and seated members (`event-in:<event>`), both expiring 30 days after the
event."""

from __future__ import annotations

from typing import cast

from streams.state.base import StoreBase


class MallStore(StoreBase):
    async def index_mall_order(self, member_id: str, order_id: str, collect_by_ms: int) -> None:
        await self.redis.zadd(self.mall_orders_key, {f"{member_id}\t{order_id}": collect_by_ms})

    async def unindex_mall_order(self, member_id: str, order_id: str) -> None:
        await self.redis.zrem(self.mall_orders_key, f"{member_id}\t{order_id}")

    async def mall_orders_due(self, now_ms: int, limit: int) -> list[tuple[str, str]]:
        """(member, order) of orders whose collection deadline has passed, oldest first."""
        due = cast(list[str], await self.redis.zrangebyscore(self.mall_orders_key, "-inf", now_ms, start=0, num=limit))
        out = []
        for entry in due:
            member_id, _, order_id = entry.partition("\t")
            out.append((member_id, order_id))
        return out

    async def claim_receipt(self, receipt_id: str, member_id: str, ttl_s: int) -> tuple[bool, str]:
        """Claims a receipt for a member: (claimed now, the member holding it)."""
        key = self.receipt_claim_key(receipt_id)
        if await self.redis.set(key, member_id, nx=True, ex=ttl_s):
            return True, member_id
        return False, cast(str | None, await self.redis.get(key)) or ""

    async def release_receipt(self, receipt_id: str, member_id: str) -> None:
        """Gives back a claim made for a submission the engine refused (still this member's)."""
        key = self.receipt_claim_key(receipt_id)
        if await self.redis.get(key) == member_id:
            await self.redis.delete(key)

    async def join_waitlist(self, event: str, member_id: str, at_ms: int, expire_at_ms: int) -> None:
        key = self.event_wait_key(event)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {member_id: at_ms}, nx=True)
        pipe.pexpireat(key, expire_at_ms)
        await pipe.execute()

    async def leave_waitlist(self, event: str, member_id: str) -> None:
        await self.redis.zrem(self.event_wait_key(event), member_id)

    async def waiting(self, event: str) -> int:
        return int(await self.redis.zcard(self.event_wait_key(event)))

    async def next_waiting(self, event: str) -> tuple[str, int] | None:
        """Takes the first member of the waitlist off it (put back with `join_waitlist`
        and the same time when the promotion does not happen)."""
        got = cast(list[tuple[str, float]], await self.redis.zpopmin(self.event_wait_key(event), 1))
        if not got:
            return None
        member, score = got[0]
        return member, int(score)

    async def seat(self, event: str, member_id: str, at_ms: int, expire_at_ms: int) -> None:
        key = self.event_in_key(event)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {member_id: at_ms})
        pipe.pexpireat(key, expire_at_ms)
        await pipe.execute()

    async def unseat(self, event: str, member_id: str) -> None:
        await self.redis.zrem(self.event_in_key(event), member_id)

    async def seated_and_waiting(self, event: str) -> list[str]:
        """Every member with a seat or waiting (the event's close goes through them)."""
        out: list[str] = []
        for key in (self.event_in_key(event), self.event_wait_key(event)):
            out += cast(list[str], await self.redis.zrange(key, 0, -1))
        return out
