"""Leaderboards: each board in BOARD_SHARDS shards by member (no single key takes every
payment's score), summed on read; scores are applied by the ledger's consumer, deduplicated
by (board, event id) in ly_board."""

from __future__ import annotations

from collections.abc import Sequence

import core_ext
from streams.state.base import StoreBase

#: Leaderboards (a week's, a month's) are kept this long after their last update.
BOARD_TTL_S = 100 * 86_400
#: Each leaderboard is kept in this many shards (by member), summed on read: no single
#: key takes every payment's score.
BOARD_SHARDS = 8


class BoardStore(StoreBase):
    """Scores of members on the boards the rules define."""

    def board_plan(self, updates: Sequence[tuple[str, str, int, int]]) -> list[bytes]:
        """ly_board calls (built in the core) for (board, member, score, version) updates."""
        return core_ext.board_commands(self.ns, list(updates), BOARD_SHARDS, BOARD_TTL_S)

    async def apply_board_plan(self, plan: Sequence[bytes]) -> int:
        """Sends ly_board calls the core built; returns how many scores were taken."""
        if not plan:
            return 0
        # On the side channel: absolute scores, safe on a Redis restarted before its repair
        # (which waits for the ledger sink that sends them).
        return sum(int(x) for x in await self.run(plan, "leaderboards", side=True))

    async def board_top(self, board: str, n: int) -> list[tuple[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(BOARD_SHARDS):
            pipe.zrevrange(self.board_keys(board, shard)[0], 0, n - 1, withscores=True)
        merged = [(m, int(s)) for part in await pipe.execute() for m, s in part]
        merged.sort(key=lambda x: (-x[1], x[0]))
        return merged[:n]

    async def board_rank(self, board: str, member_id: str) -> tuple[int | None, int, int]:
        """(rank from 1, or None if not on the board; points; members on the board)."""
        own = self.board_keys(board, core_ext.board_shard(member_id, BOARD_SHARDS))[0]
        score = await self.redis.zscore(own, member_id)
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(BOARD_SHARDS):
            key = self.board_keys(board, shard)[0]
            pipe.zcard(key)
            if score is not None:
                pipe.zcount(key, f"({score}", "+inf")
        replies = await pipe.execute()
        size = sum(int(x) for x in replies[:: 2 if score is not None else 1])
        if score is None:
            return None, 0, size
        return 1 + sum(int(x) for x in replies[1::2]), int(score), size
