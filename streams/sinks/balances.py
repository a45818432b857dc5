"""Member balances and states in Redis: the read of a batch's context and the
atomic, idempotent apply of each member's movements.

Keys of one member are hash-tagged by member (`ly:m:{m-1}`, `ly:ev:{m-1}:tx-9`,
`ly:hist:{m-1}`). A member's movements of a batch are applied by one Lua call that
first checks the member's sequence number (optimistic concurrency: the state the
core computed from is still the stored one) and every campaign budget it draws on,
then moves the balance, writes the state and the events' records, and consumes
the budgets, all in one atomic step. Campaign budget keys are global, so this
script needs a single Redis primary (or a cluster slot holding the campaigns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

HISTORY_LENGTH = 20
#: Leaderboards (a week's, a month's) are kept this long after their last update.
BOARD_TTL_S = 100 * 86_400

# KEYS: member hash, history list, then event, refunded-payment and campaign keys.
# ARGV: expected seq, new state, n events, n campaigns, outbox key index (0: none), member id,
#       per campaign: key index, points, budget (-1: none),
#       per event: key index, refunded key index (0: none), points, rows, amount, kind,
#                  refund amount, clawback points, result, record points, used, returned,
#                  stored-value delta (fen), n leaderboards, leaderboard points, n key indexes
# Point arithmetic is HINCRBY on strings (int64 in Redis); the one comparison made
# in Lua (budget) is on integers below 2^53, which Lua's doubles hold exactly.
APPLY_MEMBER_LUA = """
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
if seq ~= ARGV[1] then return {'conflict', seq} end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local MEMBER_ID = ARGV[6]
local n_ev = tonumber(ARGV[3])
local n_c = tonumber(ARGV[4])
local outbox = tonumber(ARGV[5])
local p = 7
for i = 1, n_c do
  local budget = tonumber(ARGV[p + 2])
  if budget >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[tonumber(ARGV[p])], 'spent') or '0')
    if spent + tonumber(ARGV[p + 1]) > budget then return {'budget', ARGV[p]} end
  end
  p = p + 3
end
p = 7
for i = 1, n_c do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[p])], 'spent', ARGV[p + 1])
  p = p + 3
end
for i = 1, n_ev do
  local delta = ARGV[p + 2]
  redis.call('HINCRBY', KEYS[1], 'balance', delta)
  if string.sub(delta, 1, 1) == '-' then
    redis.call('HINCRBY', KEYS[1], 'clawed_back', string.sub(delta, 2))
  else
    redis.call('HINCRBY', KEYS[1], 'earned', delta)
  end
  redis.call('HINCRBY', KEYS[1], 'events', 1)
  redis.call('HSET', KEYS[tonumber(ARGV[p])], 'rows', ARGV[p + 3], 'amount', ARGV[p + 4], 'points', ARGV[p + 9],
             'kind', ARGV[p + 5], 'refunded_amount', 0, 'refunded_points', 0, 'result', ARGV[p + 8],
             'used', ARGV[p + 10], 'returned_used', 0, 'applied_at_ms', now_ms)
  if outbox > 0 then redis.call('RPUSH', KEYS[outbox], ARGV[p + 3]) end
  local orig = tonumber(ARGV[p + 1])
  if orig > 0 then
    redis.call('HINCRBY', KEYS[orig], 'refunded_amount', ARGV[p + 6])
    redis.call('HINCRBY', KEYS[orig], 'refunded_points', ARGV[p + 7])
    redis.call('HINCRBY', KEYS[orig], 'returned_used', ARGV[p + 11])
  end
  redis.call('LPUSH', KEYS[2], ARGV[p + 3])
  if ARGV[p + 12] ~= '0' then redis.call('HINCRBY', KEYS[1], 'sv_balance', ARGV[p + 12]) end
  local nb = tonumber(ARGV[p + 13])
  for b = 1, nb do
    local bk = KEYS[tonumber(ARGV[p + 14 + b])]
    redis.call('ZINCRBY', bk, ARGV[p + 14], MEMBER_ID)
    redis.call('EXPIRE', bk, BOARD_TTL)
  end
  p = p + 15 + nb
end
redis.call('LTRIM', KEYS[2], 0, HISTORY_LAST)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'seq', tostring(tonumber(ARGV[1]) + 1))
return {'ok', ARGV[1]}
""".replace("HISTORY_LAST", str(HISTORY_LENGTH - 1)).replace("BOARD_TTL", str(BOARD_TTL_S))

Original = tuple[int, int, int, int, int, int]
Keys = tuple[str | None, str | None, str | None, tuple[str, str] | None, int, str]


@dataclass(frozen=True)
class BatchContext:
    applied: list[bool]
    originals: list[Original | None]
    members: dict[str, tuple[int, str | None]]
    budget_spent: dict[str, int]


@dataclass
class EventMove:
    """One applied event of a member: its key, points, rows and refund effects."""

    event_id: str
    kind: str
    points: int
    rows: str
    amount_fen: int
    refund_of: str | None
    clawback_points: int
    result: str = ""
    #: What the record keeps as points (a payment: earned), points used at the till,
    #: and points a refund gave back; default: the movement itself.
    record_points: int | None = None
    used: int = 0
    returned: int = 0
    #: Stored value moved (fen), kept apart from points.
    sv_fen: int = 0
    #: Leaderboards (sorted-set names, see BalanceStore.board_key) this event adds to.
    boards: tuple[str, ...] = ()
    board_points: int = 0


@dataclass
class MemberMoves:
    member_id: str
    expected_seq: int
    state_json: str
    review_at_ms: int | None
    next_check_ms: int | None = None
    events: list[EventMove] = field(default_factory=list)
    campaigns: dict[str, int] = field(default_factory=dict)
    #: Keep the rows in the ledger outbox until the caller has them in Kafka (HTTP path).
    outbox: bool = False


# A guest payment is kept once per event id (the seen set outlives the crediting, so a
# late redelivery is not kept again).
_KEEP_GUEST = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class BalanceStore:
    """Balances, states and applied-event records of members, in Redis."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.ns = namespace
        # A blocking pool: under a burst, requests wait for a free connection (up to 10 s)
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=128, timeout=10)
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._apply = self.redis.register_script(APPLY_MEMBER_LUA)
        self._keep_guest = self.redis.register_script(_KEEP_GUEST)

    async def setup(self) -> None:
        """Connects and pings, so a bad URL fails at start rather than on the first batch."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    def member_key(self, member_id: str) -> str:
        return f"{self.ns}:m:{{{member_id}}}"

    def event_key(self, member_id: str, event_id: str) -> str:
        return f"{self.ns}:ev:{{{member_id}}}:{event_id}"

    def history_key(self, member_id: str) -> str:
        return f"{self.ns}:hist:{{{member_id}}}"

    def campaign_key(self, campaign_id: str) -> str:
        return f"{self.ns}:camp:{campaign_id}"

    def board_key(self, board: str) -> str:
        """A leaderboard: `w:2026-W48:all`, `m:2026-11:bu:sh-mall` (period, then scope)."""
        return f"{self.ns}:lb:{board}"

    async def board_top(self, board: str, n: int) -> list[tuple[str, int]]:
        return [(m, int(s)) for m, s in await self.redis.zrevrange(self.board_key(board), 0, n - 1, withscores=True)]

    async def board_rank(self, board: str, member_id: str) -> tuple[int | None, int, int]:
        """(rank from 1, or None if not on the board; points; members on the board)."""
        pipe = self.redis.pipeline(transaction=False)
        key = self.board_key(board)
        pipe.zrevrank(key, member_id)
        pipe.zscore(key, member_id)
        pipe.zcard(key)
        rank, score, size = await pipe.execute()
        return (None if rank is None else int(rank) + 1), int(score or 0), int(size)

    async def budget_spent(self, budget_ids: Sequence[str]) -> dict[str, int]:
        """Units taken of each budget (campaign points, coupon and prize stocks)."""
        return await self.campaign_spent(budget_ids)

    async def sv_balances(self) -> dict[str, tuple[int, str | None]]:
        """Every member's stored value in Redis and state JSON: for its reconciliation."""
        out: dict[str, tuple[int, str | None]] = {}
        prefix = f"{self.ns}:m:{{"
        async for batch in _scan_pages(self.redis, f"{self.ns}:m:*"):
            pipe = self.redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, ["sv_balance", "state"])
            for key, (sv, state) in zip(batch, await pipe.execute(), strict=True):
                out[key[len(prefix):-1]] = (int(sv or 0), state)
        return out

    def referral_phone_key(self, phone: str) -> str:
        return f"{self.ns}:ref-phone:{phone}"

    async def claim_referral_phone(self, phone: str, member_id: str) -> bool:
        """True if this (pseudonymised) phone number has not earned an inviter a reward for
        another member: the first registration with it claims it, and a redelivery of that
        same registration still finds it its own."""
        key = self.referral_phone_key(phone)
        await self.redis.set(key, member_id, nx=True)
        return await self.redis.get(key) == member_id

    @property
    def tier_reviews_key(self) -> str:
        return f"{self.ns}:tier_reviews"

    @property
    def wallet_checks_key(self) -> str:
        return f"{self.ns}:wallet_checks"

    @property
    def outbox_key(self) -> str:
        return f"{self.ns}:ledger_outbox"

    def identity_key(self, kind: str, external_id: str) -> str:
        return f"{self.ns}:id:{kind}:{external_id}"

    def guest_key(self, kind: str, external_id: str) -> str:
        return f"{self.ns}:guest:{{{kind}:{external_id}}}"

    def pushed_key(self, push_id: str) -> str:
        return f"{self.ns}:pushed:{push_id}"

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
        return bool(await self.redis.set(f"{self.ns}:nonce:{scope}:{nonce}", 1, nx=True, ex=window_s))

    async def rate_hit(self, client_key: str, limit_per_s: int, second: int | None = None) -> bool:
        """Counts one request of a client in the current (Unix) second; False past the limit."""
        second = int(time.time()) if second is None else second
        key = f"{self.ns}:rl:{client_key}:{second}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
        return int(count) <= limit_per_s

    def gateway_route_key(self, payment_event_id: str) -> str:
        return f"{self.ns}:gwpay:{payment_event_id}"

    async def remember_route(self, payment_event_id: str, route: dict[str, Any], keep_days: int) -> None:
        """What a gateway's refund notification will not say again: the payer and the BU,
        merchant and category its payment was routed to (WeChat refunds name no payer)."""
        await self.redis.set(self.gateway_route_key(payment_event_id), orjson.dumps(route), ex=keep_days * 86_400)

    async def route_of(self, payment_event_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.gateway_route_key(payment_event_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def read_context(self, keys: Sequence[Keys], budgeted: Sequence[str]) -> BatchContext:
        """One pipeline: applied flags, refunded payments, member states, budgets."""
        pipe = self.redis.pipeline(transaction=False)
        members = sorted({k[1] for k in keys if k[1] is not None})
        for m in members:
            pipe.hmget(self.member_key(m), ["seq", "state"])
        for c in budgeted:
            pipe.hget(self.campaign_key(c), "spent")
        for event_id, member_id, refund_of, *_ in keys:
            if event_id is None or member_id is None:
                continue
            pipe.exists(self.event_key(member_id, event_id))
            if refund_of is not None:
                pipe.hmget(self.event_key(member_id, refund_of),
                           ["kind", "amount", "points", "refunded_amount", "refunded_points", "used", "returned_used"])
        replies = await pipe.execute() if len(pipe) else []
        it = iter(replies)
        stored = {m: (int(seq or 0), state) for m, (seq, state) in zip(members, it, strict=False)}
        spent = {c: int(next(it) or 0) for c in budgeted}
        applied: list[bool] = []
        originals: list[Original | None] = []
        for event_id, member_id, refund_of, *_ in keys:
            if event_id is None or member_id is None:
                applied.append(False)
                originals.append(None)
                continue
            applied.append(bool(next(it)))
            original: Original | None = None
            if refund_of is not None:
                kind, amount, points, r_amount, r_points, used, returned = next(it)
                if kind == "payment" and amount is not None and int(amount) > 0:
                    original = (int(amount), int(points), int(r_amount or 0), int(r_points or 0), int(used or 0),
                                int(returned or 0))
            originals.append(original)
        return BatchContext(applied, originals, stored, spent)

    async def apply(self, groups: Sequence[MemberMoves], budgets: dict[str, int | None]) -> list[str]:
        """Applies each member's moves atomically; returns "ok", "conflict" or "budget" per member."""
        if not groups:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            keys = [self.member_key(g.member_id), self.history_key(g.member_id)]
            if g.outbox:
                keys.append(self.outbox_key)
            args: list[object] = [g.expected_seq, g.state_json, len(g.events), len(g.campaigns),
                                  len(keys) if g.outbox else 0, g.member_id]
            for cid, points in g.campaigns.items():
                keys.append(self.campaign_key(cid))
                budget = budgets.get(cid)
                args += [len(keys), points, -1 if budget is None else budget]
            for e in g.events:
                keys.append(self.event_key(g.member_id, e.event_id))
                ev_index = len(keys)
                orig_index = 0
                if e.refund_of is not None:
                    keys.append(self.event_key(g.member_id, e.refund_of))
                    orig_index = len(keys)
                args += [ev_index, orig_index, e.points, e.rows, e.amount_fen, e.kind,
                         e.amount_fen if e.refund_of is not None else 0, e.clawback_points, e.result,
                         e.points if e.record_points is None else e.record_points, e.used, e.returned,
                         e.sv_fen, len(e.boards), e.board_points]
                for board in e.boards:
                    keys.append(self.board_key(board))
                    args.append(len(keys))
            await self._apply(keys=keys, args=args, client=pipe)
        replies = await pipe.execute()
        results = [str(reply[0]) for reply in replies]
        ok = [g for g, r in zip(groups, results, strict=True) if r == "ok"]
        await self.schedule(self.tier_reviews_key, {g.member_id: g.review_at_ms for g in ok
                                                    if g.review_at_ms is not None})
        await self.schedule(self.wallet_checks_key, {g.member_id: g.next_check_ms for g in ok
                                                     if g.next_check_ms is not None})
        return results

    async def stored_rows(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ledger rows kept for already-applied (member_id, event_id) pairs."""
        if not pairs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for member_id, event_id in pairs:
            pipe.hget(self.event_key(member_id, event_id), "rows")
        return list(await pipe.execute())

    async def member(self, member_id: str) -> dict[str, str] | None:
        data = await self.redis.hgetall(self.member_key(member_id))
        return data or None

    async def history(self, member_id: str) -> list[str]:
        return list(await self.redis.lrange(self.history_key(member_id), 0, HISTORY_LENGTH - 1))

    async def resolve(self, kind: str, external_id: str) -> str | None:
        return await self.redis.get(self.identity_key(kind, external_id))  # type: ignore[no-any-return]

    async def bind(self, kind: str, external_id: str, member_id: str) -> str:
        """Binds an external id to a member unless bound already; returns the owner."""
        key = self.identity_key(kind, external_id)
        await self.redis.set(key, member_id, nx=True)
        return await self.redis.get(key)  # type: ignore[no-any-return]

    async def keep_guests(self, guests: Sequence[tuple[str, str, str, bytes]], keep_days: int) -> list[bool]:
        """Keeps guest payments (kind, external id, event id, body) for crediting at
        registration, in one round trip; False for one kept already (a redelivery or a
        gateway's retry): it is not counted twice."""
        if not guests:
            return []
        ttl = max(1, keep_days) * 86_400
        pipe = self.redis.pipeline(transaction=False)
        for kind, external_id, event_id, body in guests:
            tag = f"{{{kind}:{external_id}}}"  # both keys in one Redis Cluster slot
            await self._keep_guest(keys=[f"{self.ns}:guest:{tag}", f"{self.ns}:guest-seen:{tag}"],
                                   args=[event_id, body, ttl], client=pipe)
        return [bool(x) for x in await pipe.execute()]

    async def guest_payments(self, kind: str, external_id: str) -> list[str]:
        return list(await self.redis.lrange(self.guest_key(kind, external_id), 0, -1))

    async def forget_guest(self, kind: str, external_id: str) -> None:
        await self.redis.delete(self.guest_key(kind, external_id))

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
        if when:
            await self.redis.zadd(key, when)

    def parking_key(self, car_park: str, plate: str) -> str:
        return f"{self.ns}:park:{car_park}:{plate}"

    def parking_closed_key(self, exit_event_id: str) -> str:
        return f"{self.ns}:park-closed:{exit_event_id}"

    def plate_key(self, plate: str) -> str:
        return f"{self.ns}:plate:{plate}"

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

    def parked_key(self, member_id: str, payment_id: str) -> str:
        return f"{self.ns}:parked:{{{member_id}}}:{payment_id}"

    async def park(self, member_id: str, payment_id: str, body: bytes) -> None:
        await self.redis.rpush(self.parked_key(member_id, payment_id), body)

    async def parked(self, paid: Sequence[tuple[str, str]]) -> list[tuple[str, str, list[str]]]:
        """Refunds held for these (member, payment) pairs: one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for member_id, payment_id in paid:
            pipe.lrange(self.parked_key(member_id, payment_id), 0, -1)
        return [(m, p, held) for (m, p), held in zip(paid, await pipe.execute(), strict=True) if held]

    async def unpark(self, member_id: str, payment_id: str) -> None:
        await self.redis.delete(self.parked_key(member_id, payment_id))

    async def outbox(self, limit: int = 1000) -> list[str]:
        return list(await self.redis.lrange(self.outbox_key, 0, limit - 1))

    async def outbox_done(self, rows: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for r in rows:
            pipe.lrem(self.outbox_key, 1, r)
        await pipe.execute()

    async def member_state(self, member_id: str) -> tuple[int, str | None, int]:
        """(seq, state JSON, balance) of a member."""
        seq, state, balance = await self.redis.hmget(self.member_key(member_id), ["seq", "state", "balance"])
        return int(seq or 0), state, int(balance or 0)

    async def event_record(self, member_id: str, event_id: str) -> dict[str, str]:
        return await self.redis.hgetall(self.event_key(member_id, event_id))  # type: ignore[no-any-return]

    async def states(self) -> dict[str, tuple[int, str | None]]:
        """Every member's (balance, state JSON): for reconciliation."""
        out: dict[str, tuple[int, str | None]] = {}
        prefix = f"{self.ns}:m:{{"
        async for batch in _scan_pages(self.redis, f"{self.ns}:m:*"):
            pipe = self.redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, ["balance", "state"])
            for key, (balance, state) in zip(batch, await pipe.execute(), strict=True):
                out[key[len(prefix):-1]] = (int(balance or 0), state)
        return out

    async def balances(self) -> dict[str, int]:
        """Every member's balance (SCAN, then one pipeline per page): for reconciliation."""
        out: dict[str, int] = {}
        prefix = f"{self.ns}:m:{{"
        async for batch in _scan_pages(self.redis, f"{self.ns}:m:*"):
            pipe = self.redis.pipeline(transaction=False)
            for key in batch:
                pipe.hget(key, "balance")
            for key, value in zip(batch, await pipe.execute(), strict=True):
                out[key[len(prefix):-1]] = int(value or 0)
        return out

    async def campaign_spent(self, campaign_ids: Sequence[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for c in campaign_ids:
            pipe.hget(self.campaign_key(c), "spent")
        return {c: int(v or 0) for c, v in zip(campaign_ids, await pipe.execute(), strict=True)}


async def _scan_pages(client: aioredis.Redis, pattern: str, count: int = 1000):  # type: ignore[no-untyped-def]
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=count)
        if keys:
            yield keys
        if cursor == 0:
            break
