"""Budgets (campaign points, coupon and prize stocks, trigger budgets): each on its own
key (`ly:budget:{id}`), reserved by event id before a member's write and settled after it
(ly_reserve / ly_settle in functions.lua), so two workers never overspend one."""

from __future__ import annotations

from collections.abc import Sequence

from streams.state.base import StoreBase


class BudgetStore(StoreBase):
    """Units reserved and taken of each budget."""

    async def settle_reservations(self, budget_ids: Sequence[str], reservation: str, commit: bool) -> None:
        for budget_id in budget_ids:
            await self.redis.fcall("ly_settle", 1, self.budget_key(budget_id), reservation, int(commit))

    async def budget_spent(self, budget_ids: Sequence[str]) -> dict[str, int]:
        """Units taken of each budget (campaign points, coupon and prize stocks), reservations included."""
        pipe = self.redis.pipeline(transaction=False)
        for b in budget_ids:
            pipe.hget(self.budget_key(b), "spent")
        return {b: int(v or 0) for b, v in zip(budget_ids, await pipe.execute(), strict=True)}
