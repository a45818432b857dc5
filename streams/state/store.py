"""The engine's state in Redis (over 400 lines: one client over the key space of keys.py;
its concerns are grouped by section below): the member's atomic step (Redis Functions in
streams/state/functions.lua), event records, outboxes, budgets, guests, boards, identities,
schedules, nonces and rate limits. Keys come from streams/state/keys.py, records'
shapes from streams/state/records.py.

Keys of one member are hash-tagged by member (`ly:m:{m-1}`, `ly:ev:{m-1}`, `ly:ob:{m-1}`,
`ly:h:{m-1}`): the member's step names only them, so it runs on a Redis Cluster too.
Budgets (`ly:budget:{id}`), guest facts (`ly:guest:{kind:id}`) and leaderboard shards
(`ly:lb:{board#n}`) are keys of their own with their own idempotent steps. The accrual
hot path builds its commands in the Rust core (core_ext.AccrualBatch) and sends them
through `run` (streams/state/resp.py); the HTTP paths use `apply` here.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

import core_ext
from streams.state.keys import KeySpace
from streams.state.records import (
    MemberMoves,
    decode_record,
    encode_json_record,
    first_row,
    guest_payment,
    refunded_record,
)
from streams.state.resp import RawChannel, pack, raise_for_errors

log = logging.getLogger(__name__)

FUNCTIONS_PATH = Path(__file__).with_name("functions.lua")
#: Leaderboards (a week's, a month's) are kept this long after their last update.
BOARD_TTL_S = 100 * 86_400
#: Each leaderboard is kept in this many shards (by member), summed on read: no single
#: key takes every payment's score.
BOARD_SHARDS = 8
#: Indexes of members whose outbox an HTTP write used (flushed by a timer after a crash).
OUTBOX_INDEX_SHARDS = 16
DAY_MS = 86_400_000
#: Redis settings the records rely on: small hashes stay in the compact listpack encoding.
LISTPACK_SETTINGS = {"hash-max-listpack-value": 512, "hash-max-listpack-entries": 512}


class BalanceStore(KeySpace):
    """Balances, states and applied-event records of members, in Redis."""

    def __init__(self, url: str, namespace: str, horizon_days: int = 400, history_len: int = 10,
                 members_per_call: int = 1) -> None:
        super().__init__(namespace)
        self.url = url
        self.horizon_days = horizon_days
        self.history_len = history_len
        #: Members the accrual writes per ly_apply call; 1 once `setup` finds a cluster.
        self.members_per_call = members_per_call
        # A blocking pool: under a burst, requests wait for a free connection (up to 10 s)
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=128, timeout=10)
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.channel = RawChannel(url)

    async def setup(self) -> None:
        """Connects, loads the functions and checks the encoding settings, so a bad URL
        fails at start rather than on the first batch."""
        await self.redis.ping()
        await self.load_functions()
        if self.members_per_call > 1 and int((await self.redis.info("cluster")).get("cluster_enabled", 0)):
            log.info("Redis is a cluster node: one member per ly_apply call (each call names one hash slot)")
            self.members_per_call = 1
        config = await self.redis.config_get("hash-max-listpack-*")
        low = {k: v for k, v in LISTPACK_SETTINGS.items() if int(config.get(k, v)) < v}
        if low:
            log.warning("Redis %s below %s: event records take several times the memory (docs/scaling.md)",
                        config, LISTPACK_SETTINGS)

    async def load_functions(self) -> None:
        await self.redis.function_load(FUNCTIONS_PATH.read_text(), replace=True)

    async def close(self) -> None:
        await self.channel.close()
        await self.redis.aclose()

    async def run(self, commands: Sequence[bytes], what: str) -> list[Any]:
        """Sends a plan's commands; reloads the functions if Redis lost them (a flush, a new
        server) and raises a transient error so the batch is retried."""
        replies = await self.channel.run(commands)
        try:
            raise_for_errors(replies, what)
        except redis.exceptions.ResponseError as exc:
            if "Function not found" in str(exc) or "NOSCRIPT" in str(exc):
                log.warning("%s; loading the functions again", exc)
                await self.load_functions()
                raise redis.exceptions.ConnectionError(f"{what}: functions were missing, loaded again") from exc
            raise
        return replies

    # ---- keys ----------------------------------------------------------------------

    # ---- the member's atomic step for the HTTP paths ---------------------------------

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
                await self._settle(reserved, reservation, commit=False)
                return "budget"
            reserved.append(budget_id)
        records: list[str] = []
        for e in g.events:
            records += [e.event_id, encode_json_record(e)]
            if e.refund_of is not None:
                original = await self.redis.hget(self.records_key(g.member_id), e.refund_of)
                again = refunded_record(original, e) if original else None
                if again is not None:
                    records += [e.refund_of, again]
        if g.outbox and g.events:
            await self.redis.zadd(self.outbox_index_key(zlib.crc32(g.member_id.encode()) % OUTBOX_INDEX_SHARDS),
                                  {g.member_id: int(time.time() * 1000)})
        outbox = [x for e in g.events for x in (e.event_id, e.rows)] if g.outbox else []
        hist = [e.rows for e in g.events if e.rows][-self.history_len:]
        hist = [h for h in (first_row(r) for r in hist) if h]
        balance = sum(e.points for e in g.events)
        earned = sum(e.points for e in g.events if e.points > 0)
        clawed = -sum(e.points for e in g.events if e.points < 0)
        now = int(time.time() * 1000)
        # Deltas ("d"): this path has not read the counters; the sequence check keeps the state.
        args: list[Any] = [1, now // DAY_MS, now - self.horizon_days * DAY_MS, self.horizon_days * 86_400 + 86_400,
                           self.history_len, g.expected_seq, "d", g.state_json, balance, earned, clawed, len(g.events),
                           sum(e.sv_fen for e in g.events), 0, len(records) // 2, *records, len(outbox) // 2, *outbox,
                           len(hist), *hist]
        keys = [self.member_key(g.member_id), self.records_key(g.member_id), self.outbox_key(g.member_id),
                self.history_key(g.member_id)]
        (reply,) = await self.redis.fcall("ly_apply", 4, *keys, *args)
        ok = reply == "ok"
        await self._settle(reserved, reservation, commit=ok)
        return "ok" if ok else "conflict"

    async def _settle(self, budget_ids: Sequence[str], reservation: str, commit: bool) -> None:
        for budget_id in budget_ids:
            await self.redis.fcall("ly_settle", 1, self.budget_key(budget_id), reservation, int(commit))

    async def outbox_done(self, member_id: str, event_ids: Sequence[str]) -> None:
        """The ledger topic has these rows: they leave the member's outbox."""
        if event_ids:
            await self.redis.hdel(self.outbox_key(member_id), *event_ids)

    async def orphaned_outboxes(self, older_than_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Outboxes of HTTP writes whose send may have died with the process: (member, {event id: rows})."""
        out = []
        for shard in range(OUTBOX_INDEX_SHARDS):
            key = self.outbox_index_key(shard)
            for member_id in await self.redis.zrangebyscore(key, "-inf", older_than_ms, start=0, num=500):
                rows = await self.redis.hgetall(self.outbox_key(member_id))
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

    # ---- round outboxes (the accrual's; docs/hot-path.md) ------------------------------

    async def stale_outboxes(self, older_than_ms: int, limit: int = 50) -> list[str]:
        """Tokens of round outboxes created before `older_than_ms`."""
        return list(await self.redis.zrangebyscore(self.round_outboxes_key, "-inf", older_than_ms, start=0, num=limit))

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
            record = await self.redis.hget(self.records_key(member_id), event_id)
            if record is not None and record.endswith(f"|@{token}"):
                out.append(rows)
        return out

    async def forget_outbox(self, token: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.round_outbox_key(token))
        pipe.zrem(self.round_outboxes_key, token)
        await pipe.execute()

    # ---- reads -------------------------------------------------------------------------

    async def member(self, member_id: str) -> dict[str, str] | None:
        data = await self.redis.hgetall(self.member_key(member_id))
        return data or None

    async def history(self, member_id: str) -> list[str]:
        return list(await self.redis.lrange(self.history_key(member_id), 0, self.history_len - 1))

    async def member_state(self, member_id: str) -> tuple[int, str | None, int]:
        """(seq, state JSON, balance) of a member."""
        seq, state, balance = await self.redis.hmget(self.member_key(member_id), ["seq", "state", "balance"])
        return int(seq or 0), state, int(balance or 0)

    async def event_record(self, member_id: str, event_id: str) -> dict[str, str]:
        return decode_record(await self.redis.hget(self.records_key(member_id), event_id))

    async def budget_spent(self, budget_ids: Sequence[str]) -> dict[str, int]:
        """Units taken of each budget (campaign points, coupon and prize stocks), reservations included."""
        pipe = self.redis.pipeline(transaction=False)
        for b in budget_ids:
            pipe.hget(self.budget_key(b), "spent")
        return {b: int(v or 0) for b, v in zip(budget_ids, await pipe.execute(), strict=True)}

    # ---- leaderboards ------------------------------------------------------------------

    def board_plan(self, updates: Sequence[tuple[str, str, int, int]]) -> list[bytes]:
        """ly_board calls (built in the core) for (board, member, score, version) updates."""
        return core_ext.board_commands(self.ns, list(updates), BOARD_SHARDS, BOARD_TTL_S)

    async def apply_board_plan(self, plan: Sequence[bytes]) -> int:
        """Sends ly_board calls the core built; returns how many scores were taken."""
        if not plan:
            return 0
        return sum(int(x) for x in await self.run(plan, "leaderboards"))

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

    # ---- members scanned (reconciliation) --------------------------------------------

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
        cursor = 0
        while True:
            cursor, keys = await self.redis.scan(cursor=cursor, match=self.member_pattern, count=1000)
            if keys:
                pipe = self.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, fields)
                yield [k[len(prefix):-1] for k in keys], await pipe.execute()
            if cursor == 0:
                break

    # ---- identities, guests, referrals ---------------------------------------------------

    async def claim_referral_phone(self, phone: str, member_id: str) -> bool:
        """True if this (pseudonymised) phone number has not earned an inviter a reward for
        another member: the first registration with it claims it, and a redelivery of that
        same registration still finds it its own."""
        key = self.referral_phone_key(phone)
        await self.redis.set(key, member_id, nx=True)
        return await self.redis.get(key) == member_id

    async def resolve(self, kind: str, external_id: str) -> str | None:
        return await self.redis.get(self.identity_key(kind, external_id))  # type: ignore[no-any-return]

    async def resolve_many(self, payers: Sequence[tuple[str, str]]) -> list[str | None]:
        """Members of several payers in one round trip."""
        if not payers:
            return []
        return list(await self.redis.mget([self.identity_key(k, i) for k, i in payers]))

    async def bind(self, kind: str, external_id: str, member_id: str) -> str:
        """Binds an external id to a member unless bound already; returns the owner."""
        key = self.identity_key(kind, external_id)
        await self.redis.set(key, member_id, nx=True)
        return await self.redis.get(key)  # type: ignore[no-any-return]

    async def guest_payments(self, kind: str, external_id: str) -> list[dict[str, Any]]:
        """A payer's guest payments as payment bodies without a member, oldest first."""
        facts = await self.redis.hgetall(self.guest_key(kind, external_id))
        return sorted((guest_payment(event_id, fact) for event_id, fact in facts.items()),
                      key=lambda e: e["occurred_at"])

    async def forget_guest(self, kind: str, external_id: str) -> None:
        await self.redis.delete(self.guest_key(kind, external_id))

    # ---- pushes, nonces, rate limits, gateway routes ---------------------------------------

    async def pushed(self, push_ids: Sequence[str]) -> list[bool]:
        """Which pushes were delivered already (answered 2xx by the webhook)."""
        pipe = self.redis.pipeline(transaction=False)
        for pid in push_ids:
            pipe.exists(self.pushed_key(pid))
        return [bool(x) for x in await pipe.execute()]

    async def mark_pushed(self, push_ids: Sequence[str], keep_days: int = 90) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for pid in push_ids:
            pipe.set(self.pushed_key(pid), 1, ex=keep_days * 86_400)
        await pipe.execute()

    async def claim_nonce(self, scope: str, nonce: str, window_s: int) -> bool:
        """True the first time a signed request's nonce is seen within the window (SET NX)."""
        return bool(await self.redis.set(self.nonce_key(f"{scope}:{nonce}"), 1, nx=True, ex=window_s))

    async def claim_nonces(self, claims: Sequence[tuple[str, str]], window_s: int) -> list[bool]:
        """Several (scope, nonce) claims in one round trip (the ingress's hot path: packed
        here and parsed by hiredis, not re-encoded argument by argument)."""
        window = str(window_s).encode()
        replies = await self.run([pack(b"SET", self.nonce_key(f"{scope}:{nonce}").encode(), b"1", b"NX", b"EX", window)
                                  for scope, nonce in claims], "nonce claims")
        return [r is not None for r in replies]

    async def claim_events(self, claims: Sequence[tuple[str, str, str | None]], keep_s: int,
                           nonce_window_s: int) -> list[tuple[bool, str | None]]:
        """Several (event id, claimant, nonce or None) claims in one round trip: `SET NX GET`
        on the event id's own key (one key each: no cross-slot step on a cluster), and the
        callback's nonce (`scope:nonce`) taken as `claim_nonces` takes it. Per claim: whether
        the nonce was new (True without one), and None where the id's claim is new, else
        whoever claimed it first (a retry of the same sender: itself)."""
        keep, window = str(keep_s).encode(), str(nonce_window_s).encode()
        commands: list[bytes] = []
        for event_id, claimant, nonce in claims:
            if nonce is not None:
                commands.append(pack(b"SET", self.nonce_key(nonce).encode(), b"1", b"NX", b"EX", window))
            commands.append(pack(b"SET", self.event_claim_key(event_id).encode(), claimant.encode(), b"NX", b"GET",
                                 b"EX", keep))
        replies = iter(await self.run(commands, "event claims"))
        out: list[tuple[bool, str | None]] = []
        for _event_id, _claimant, nonce in claims:
            fresh = next(replies) is not None if nonce is not None else True
            first = next(replies)
            out.append((fresh, None if first is None else first.decode() if isinstance(first, bytes) else str(first)))
        return out

    async def rate_hit(self, client_key: str, limit_per_s: int, second: int | None = None) -> bool:
        """Counts one request of a client in the current (Unix) second; False past the limit."""
        second = int(time.time()) if second is None else second
        key = self.rate_key(client_key, second)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
        return int(count) <= limit_per_s

    async def remember_route(self, payment_event_id: str, route: dict[str, Any], keep_days: int) -> None:
        """What a gateway's refund notification will not say again: the payer and the BU,
        merchant and category its payment was routed to (WeChat refunds name no payer)."""
        await self.redis.set(self.gateway_route_key(payment_event_id), orjson.dumps(route), ex=keep_days * 86_400)

    async def route_of(self, payment_event_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.gateway_route_key(payment_event_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    # ---- schedules -------------------------------------------------------------------------

    async def due(self, key: str, now_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Members whose scheduled review or wallet check (`key`) is due."""
        items = await self.redis.zrangebyscore(key, "-inf", now_ms, start=0, num=limit, withscores=True)
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

    # ---- parking ---------------------------------------------------------------------------

    async def plate_binding(self, plate: str) -> dict[str, str]:
        return await self.redis.hgetall(self.plate_key(plate))  # type: ignore[no-any-return]

    async def bind_plate(self, plate: str, member_id: str, auto_pay: bool) -> str:
        """Binds a plate to a member unless another member has it; returns the owner."""
        key = self.plate_key(plate)
        await self.redis.hsetnx(key, "member_id", member_id)
        owner = await self.redis.hget(key, "member_id")
        if owner == member_id:
            await self.redis.hset(key, "auto_pay", "1" if auto_pay else "0")
        return owner  # type: ignore[no-any-return]

    # ---- refunds held for their payment ----------------------------------------------------

    @property
    def held_key(self) -> str:
        """Every (member, payment) with refunds held, scored by the deadline of the first."""
        return f"{self.ns}:held"

    async def park(self, member_id: str, payment_id: str, body: bytes, deadline_ms: int) -> None:
        """Holds a refund until its payment is applied, at most until `deadline_ms` (the
        first held refund of a payment sets it for all of them); the member's `held` count
        tells the accrual to look (one transaction: both keys are the member's). The index
        entry goes first, so a crash between leaves an entry whose list is empty, which the
        expiry drops; the list itself expires a day after the deadline whatever happens."""
        await self.redis.zadd(self.held_key, {f"{member_id}\t{payment_id}": deadline_ms}, nx=True)
        pipe = self.redis.pipeline(transaction=True)
        key = self.parked_key(member_id, payment_id)
        pipe.rpush(key, body)
        pipe.hincrby(self.member_key(member_id), "held", 1)
        pipe.pexpireat(key, deadline_ms + 86_400_000)
        await pipe.execute()

    async def held_due(self, now_ms: int, limit: int = 500) -> list[tuple[str, str, list[str]]]:
        """(member, payment, held bodies) whose deadline has passed, oldest first."""
        due = await self.redis.zrangebyscore(self.held_key, "-inf", now_ms, start=0, num=limit)
        pairs = [tuple(entry.split("\t", 1)) for entry in due]
        pipe = self.redis.pipeline(transaction=False)
        for member_id, payment_id in pairs:
            pipe.lrange(self.parked_key(member_id, payment_id), 0, -1)
        return [(m, p, bodies) for (m, p), bodies in zip(pairs, await pipe.execute(), strict=True)]

    async def held_list(self, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """How many payments have refunds held, and the oldest `limit` of them."""
        total = await self.redis.zcard(self.held_key)
        entries = await self.redis.zrange(self.held_key, 0, limit - 1, withscores=True)
        pipe = self.redis.pipeline(transaction=False)
        for entry, _ in entries:
            pipe.llen(self.parked_key(*entry.split("\t", 1)))
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

    async def parked(self, paid: Sequence[tuple[str, str]]) -> list[tuple[str, str, list[str]]]:
        """Refunds held for these (member, payment) pairs: one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for member_id, payment_id in paid:
            pipe.lrange(self.parked_key(member_id, payment_id), 0, -1)
        return [(m, p, held) for (m, p), held in zip(paid, await pipe.execute(), strict=True) if held]

    async def unpark(self, member_id: str, payment_id: str, count: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.parked_key(member_id, payment_id))
        pipe.hincrby(self.member_key(member_id), "held", -count)
        await pipe.execute()
        await self.redis.zrem(self.held_key, f"{member_id}\t{payment_id}")


