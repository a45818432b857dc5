"""WeChat Pay business circle (智慧商圈) in Redis: the circle payments whose points are to
be synced back to WeChat Pay (a record each and an index by the time of the next try),
and the openid with which each member authorised the circle.

A cache of durable facts: every record written here is also a `bindings` row (kinds
`circle` and `circle_member`, sql/013_member_states.sql) that `loyalty rebuild` restores."""

from __future__ import annotations

from typing import Any, cast

import orjson

from streams.state.base import StoreBase

#: A circle payment's record is kept this long after its last change (its sync): WeChat
#: Pay watches refunds for 30 days after the sync.
CIRCLE_KEEP_S = 31 * 86_400


class CircleStore(StoreBase):
    """Business-circle payments to sync, and members' circle authorisations."""

    async def circle_payment(self, transaction_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.circle_payment_key(transaction_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def note_circle_payment(self, record: dict[str, Any], due_ms: int) -> bool:
        """Keeps a circle payment to sync unless it is known already (a retried notification);
        True if it is new. Its sync is due at `due_ms`."""
        key = self.circle_payment_key(record["transaction_id"])
        if not await self.redis.set(key, orjson.dumps(record), ex=CIRCLE_KEEP_S, nx=True):
            return False
        await self.redis.zadd(self.circle_due_key, {record["transaction_id"]: due_ms}, nx=True)
        return True

    async def save_circle_payment(self, record: dict[str, Any]) -> None:
        await self.redis.set(self.circle_payment_key(record["transaction_id"]), orjson.dumps(record),
                             ex=CIRCLE_KEEP_S)

    async def circle_due(self, now_ms: int, limit: int = 200) -> list[str]:
        """Transactions whose sync is due now, the longest waiting first."""
        return cast(list[str], await self.redis.zrangebyscore(self.circle_due_key, "-inf", now_ms, start=0, num=limit))

    async def circle_later(self, transaction_id: str, due_ms: int) -> None:
        await self.redis.zadd(self.circle_due_key, {transaction_id: due_ms})

    async def circle_done(self, transaction_id: str) -> None:
        await self.redis.zrem(self.circle_due_key, transaction_id)

    async def circle_member(self, member_id: str) -> dict[str, str] | None:
        raw = await self.redis.get(self.circle_member_key(member_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def bind_circle_member(self, member_id: str, appid: str, openid: str) -> None:
        await self.redis.set(self.circle_member_key(member_id), orjson.dumps({"appid": appid, "openid": openid}))
