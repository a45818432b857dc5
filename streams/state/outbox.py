"""Outboxes: ledger rows of events applied in Redis but not yet acknowledged by the ledger
topic. The HTTP paths keep them in the member's own outbox hash (indexed for the timer that
flushes them after a crash); the accrual keeps one outbox per round (docs/hot-path.md)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import cast

import orjson

import core_ext
from streams.state.base import StoreBase
from streams.state.keys import OUTBOX_INDEX_SHARDS
from streams.state.resp import pack


class OutboxStore(StoreBase):
    """Rows waiting for the ledger topic."""

    async def outbox_done(self, member_id: str, event_ids: Sequence[str]) -> None:
        """The ledger topic has these rows: they leave the member's outbox."""
        if event_ids:
            await self.redis.hdel(self.outbox_key(member_id), *event_ids)

    async def orphaned_outboxes(self, older_than_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Outboxes of HTTP writes whose send may have died with the process: (member, {event id: rows})."""
        out = []
        for shard in range(OUTBOX_INDEX_SHARDS):
            key = self.outbox_index_key(shard)
            members = cast(list[str], await self.redis.zrangebyscore(key, "-inf", older_than_ms, start=0, num=500))
            for member_id in members:
                rows = cast(dict[str, str], await self.redis.hgetall(self.outbox_key(member_id)))
                if rows:
                    out.append((member_id, rows))
                else:
                    await self.forget_outbox_index(member_id, older_than_ms)
        return out

    async def forget_outbox_index(self, member_id: str, older_than_ms: int) -> None:
        key = self.outbox_index_key(zlib.crc32(member_id.encode()) % OUTBOX_INDEX_SHARDS)
        score = await self.redis.zscore(key, member_id)
        if score is not None and int(score) <= older_than_ms:
            await self.redis.zrem(key, member_id)

    async def stale_outboxes(self, older_than_ms: int, limit: int = 50) -> list[str]:
        """Tokens of round outboxes created before `older_than_ms`."""
        return list(cast(list[str], await self.redis.zrangebyscore(self.round_outboxes_key, "-inf", older_than_ms,
                                                                   start=0, num=limit)))

    async def outbox_rows(self, token: str) -> list[str]:
        """The ledger rows (JSON arrays) of the events a round outbox holds that the round
        applied: their records name the outbox."""
        (blob,) = await self.run([pack(b"GET", self.round_outbox_key(token).encode())], "outbox read")
        if blob is None:
            return []
        parts = core_ext.envelope_unpack(blob)
        pairs = [(parts[i].decode(), parts[i + 1].decode()) for i in range(0, len(parts) - 1, 2)]
        out = []
        for event_id, rows in pairs:
            decoded = orjson.loads(rows)
            member_id = decoded[0].get("member_id") if decoded else None
            if member_id is None:
                continue
            record = cast(str | None, await self.redis.hget(self.records_key(member_id), event_id))
            if record is not None and record.endswith(f"|@{token}"):
                out.append(rows)
        return out

    async def forget_outbox(self, token: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.round_outbox_key(token))
        pipe.zrem(self.round_outboxes_key, token)
        await pipe.execute()
