"""Schedules of members (tier reviews, wallet checks): sorted sets scored by the time a
member is due, updated after the member's write, idempotently (ZADD of the same time)."""

from __future__ import annotations

from typing import cast

from streams.state.base import StoreBase


class ScheduleStore(StoreBase):
    """Members due for a review or a wallet check."""

    async def due(self, key: str, now_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Members whose scheduled review or wallet check (`key`) is due."""
        items = cast(list[tuple[str, float]],
                     await self.redis.zrangebyscore(key, "-inf", now_ms, start=0, num=limit, withscores=True))
        return [(m, int(score)) for m, score in items]

    async def unschedule(self, key: str, member_id: str, at_ms: int) -> None:
        """Removes a due entry, unless it was rescheduled meanwhile."""
        score = await self.redis.zscore(key, member_id)
        if score is not None and int(score) == at_ms:
            await self.redis.zrem(key, member_id)

    async def schedule(self, key: str, when: dict[str, int]) -> None:
        """ZADD is idempotent: a batch retried schedules the same times again."""
        if when:
            await self.redis.zadd(key, when)
