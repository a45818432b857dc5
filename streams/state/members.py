"""Members: the atomic step of the HTTP paths (ly_apply over the member's own keys, after
its budgets are reserved), the reads of a member's hash, records and history, and the
scans reconciliation uses. The accrual's hot path sends the plans the core builds through
`StoreBase.run` instead."""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any, cast

from streams.state.base import DAY_MS
from streams.state.budgets import BudgetStore
from streams.state.keys import OUTBOX_INDEX_SHARDS
from streams.state.records import (
    EventRecord,
    MemberMoves,
    decode_record,
    encode_json_record,
    first_row,
    join_rows,
    op_record_rows,
    refunded_record,
)
from streams.state.resp import pack
from streams.state.schedules import ScheduleStore


class MemberStore(BudgetStore, ScheduleStore):
    """Balances, states and applied-event records of members."""

    async def apply(self, groups: Sequence[MemberMoves], budgets: dict[str, int | None]) -> list[str]:
        """Applies each member's moves atomically (checked against its sequence number),
        after reserving the budgets they consume; returns "ok", "conflict" or "budget" per member."""
        results: list[str] = []
        for g in groups:
            results.append(await self._apply_one(g, budgets))
        ok = [g for g, r in zip(groups, results, strict=True) if r == "ok"]
        await self.schedule(self.tier_reviews_key, {g.member_id: g.review_at_ms for g in ok
                                                    if g.review_at_ms is not None})
        await self.schedule(self.wallet_checks_key, {g.member_id: g.next_check_ms for g in ok
                                                     if g.next_check_ms is not None})
        return results

    async def _apply_one(self, g: MemberMoves, budgets: dict[str, int | None]) -> str:
        reserved: list[str] = []
        reservation = g.events[0].event_id if g.events else f"seq:{g.member_id}:{g.expected_seq}"
        for budget_id, units in g.campaigns.items():
            limit = budgets.get(budget_id)
            got = await self.redis.fcall("ly_reserve", 1, self.budget_key(budget_id), int(time.time() * 1000),
                                         -1 if limit is None else limit, reservation, units, g.member_id)
            if int(got[0]) != 1:
                await self.settle_reservations(reserved, reservation, commit=False)
                return "budget"
            reserved.append(budget_id)
        records: list[str] = []
        now = int(time.time() * 1000)
        for e in g.events:
            records += [e.event_id, encode_json_record(e, now)]
            if e.refund_of is not None:
                original = cast(str | None, await self.redis.hget(self.records_key(g.member_id), e.refund_of))
                again = refunded_record(original, e) if original else None
                if again is not None:
                    records += [e.refund_of, again]
        if g.outbox:
            await self.redis.zadd(self.outbox_index_key(zlib.crc32(g.member_id.encode()) % OUTBOX_INDEX_SHARDS),
                                  {g.member_id: int(time.time() * 1000)})
        outbox = [x for e in g.events for x in (e.event_id, e.rows)] if g.outbox else []
        if g.outbox:
            # The member's state after this write and the records it writes, for the durable
            # copy (member_states, op_records): sent with the rows, or by the outbox sweeper
            # after a crash.
            g.durable_rows = join_rows(g.state_row, op_record_rows(g.member_id, records, now))
            outbox += [g.state_entry, g.durable_rows]
        hist = [e.rows for e in g.events if e.rows][-self.history_len:]
        hist = [h for h in (first_row(r) for r in hist) if h]
        balance = sum(e.points for e in g.events)
        earned = sum(e.points for e in g.events if e.points > 0)
        debited = -sum(e.points for e in g.events if e.points < 0)
        # Deltas ("d"): this path has not read the counters; the sequence check keeps the state.
        args: list[Any] = [1, now // DAY_MS, now - self.horizon_days * DAY_MS, self.horizon_days * 86_400 + 86_400,
                           self.history_len, g.expected_seq, "d", g.state_json, balance, earned, debited, len(g.events),
                           sum(e.sv_fen for e in g.events), 0, len(records) // 2, *records, len(outbox) // 2, *outbox,
                           len(hist), *hist]
        keys = [self.member_key(g.member_id), self.records_key(g.member_id), self.outbox_key(g.member_id),
                self.history_key(g.member_id)]
        # On the raw channel: on a cluster it waits for the member's replica (WAIT on the
        # connection that wrote).
        (answers,) = await self.run([pack("FCALL", "ly_apply", 4, *keys, *args)], "member write", replicate=True)
        ok = answers[0] == b"ok"
        await self.settle_reservations(reserved, reservation, commit=ok)
        return "ok" if ok else "conflict"

    async def member(self, member_id: str) -> dict[str, str] | None:
        data = cast(dict[str, str], await self.redis.hgetall(self.member_key(member_id)))
        return data or None

    async def history(self, member_id: str) -> list[str]:
        return list(cast(list[str], await self.redis.lrange(self.history_key(member_id), 0, self.history_len - 1)))

    async def member_state(self, member_id: str) -> tuple[int, str | None, int]:
        """(seq, state JSON, balance) of a member."""
        seq, state, balance = cast(list[str | None],
                                   await self.redis.hmget(self.member_key(member_id), ["seq", "state", "balance"]))
        return int(seq or 0), state, int(balance or 0)

    async def event_record(self, member_id: str, event_id: str) -> EventRecord | None:
        return decode_record(cast(str | None, await self.redis.hget(self.records_key(member_id), event_id)))

    async def payments_since(self, member_id: str, since_ms: int) -> list[tuple[int, str, int, str]]:
        """The member's payments paid at or after `since_ms`, from their event records:
        (paid at ms, merchant, amount fen, event id). A receipt is checked against them."""
        out: list[tuple[int, str, int, str]] = []
        async for event_id, value in self.redis.hscan_iter(self.records_key(member_id), count=500):
            rec = decode_record(value)
            if rec is None or rec.kind != "payment":
                continue
            at = rec.fields.get("at_ms", "")
            if at.lstrip("-").isdigit() and int(at) >= since_ms:
                out.append((int(at), rec.fields.get("merchant_id", ""), int(rec.fields.get("amount", "0")), event_id))
        return out

    async def sv_balances(self) -> dict[str, tuple[int, str | None]]:
        """Every member's stored value in Redis and state JSON: for its reconciliation."""
        return await self._counter_and_state("sv_balance")

    async def states(self) -> dict[str, tuple[int, str | None]]:
        """Every member's (balance, state JSON): for reconciliation."""
        return await self._counter_and_state("balance")

    async def _counter_and_state(self, counter: str) -> dict[str, tuple[int, str | None]]:
        out: dict[str, tuple[int, str | None]] = {}
        async for keys, values in self._members([counter, "state"]):
            for key, (value, state) in zip(keys, values, strict=True):
                out[key] = (int(value or 0), state)
        return out

    async def balances(self) -> dict[str, int]:
        """Every member's balance (SCAN, then one pipeline per page): for reconciliation."""
        out: dict[str, int] = {}
        async for keys, values in self._members(["balance"]):
            for key, (balance,) in zip(keys, values, strict=True):
                out[key] = int(balance or 0)
        return out

    async def _members(self, fields: list[str]):  # type: ignore[no-untyped-def]
        """Pages of (member ids, [values of `fields`] per member), by SCAN."""
        prefix = f"{self.ns}:m:{{"

        async def page(keys: list[str]) -> tuple[list[str], list[Any]]:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, fields)
            return [k[len(prefix):-1] for k in keys], await pipe.execute()

        keys: list[str] = []
        # scan_iter walks every primary of a cluster, one node after the other.
        async for key in self.redis.scan_iter(match=self.member_pattern, count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                yield await page(keys)
                keys = []
        if keys:
            yield await page(keys)
