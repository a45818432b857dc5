"""Redis lost and rebuilt, checked kind by kind: every member's complete state and every
binding of a worker's namespace captured, the namespace wiped (as if Redis had lost it),
`loyalty rebuild` run, the state captured again and compared per kind. The demo day ends
with it; tests/integration/test_rebuild_everything.py drives it too."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.durable import STATE_KINDS, kind_parts, state_kinds

#: The member state's fields by kind (one list, shipped: `loyalty reconcile` uses it too).
KINDS = STATE_KINDS
#: The member hash's counters besides the state.
COUNTERS = ("balance", "earned", "debited", "events", "sv_balance")
#: Keys of bindings (after the namespace), by their prefix.
BINDINGS = ("id:", "plate:", "ref-phone:")


@dataclass
class Snapshot:
    """A namespace's members (state JSON parsed, counters) and bindings."""

    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    bindings: dict[str, Any] = field(default_factory=dict)
    #: Refunds held: each (member, payment) list, the index's deadlines, members' counts.
    held: dict[str, Any] = field(default_factory=dict)
    #: Guest payments waiting for their payer to register: payer key -> {event id: fact}.
    guests: dict[str, Any] = field(default_factory=dict)
    #: Open parking sessions and gateway payment routes.
    kept: dict[str, Any] = field(default_factory=dict)
    #: Leaderboards: board -> member -> score (the shards merged).
    boards: dict[str, dict[str, float]] = field(default_factory=dict)


def _client(redis_url: str) -> Any:
    from devtools.workers import redis_client

    return redis_client(redis_url, decode_responses=True)


def capture(redis_url: str, namespace: str) -> Snapshot:
    """Every member's state and counters and every binding of the namespace."""
    client = _client(redis_url)
    snap = Snapshot()
    try:
        members = f"{namespace}:m:{{"
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            rest = key[len(namespace) + 1:]
            if key.startswith(members):
                h = client.hgetall(key)
                m = key[len(members):-1]
                snap.states[m] = orjson.loads(h.get("state") or "{}")
                snap.counters[m] = {c: int(h.get(c) or 0) for c in COUNTERS}
                if int(h.get("held") or 0):
                    snap.held[f"count:{m}"] = int(h["held"])
            elif rest.startswith("lb:{"):
                board = rest[4:-1].rsplit("#", 1)[0]
                snap.boards.setdefault(board, {}).update(dict(client.zrange(key, 0, -1, withscores=True)))
            elif rest.startswith("parked:"):
                snap.held[rest] = client.lrange(key, 0, -1)
            elif rest == "held":
                snap.held[rest] = dict(client.zrange(key, 0, -1, withscores=True))
            elif rest.startswith("guest:{"):
                snap.guests[rest] = client.hgetall(key)
            elif rest.startswith(("park:", "gwpay:")):
                snap.kept[rest] = client.hgetall(key) if rest.startswith("park:") else client.get(key)
            elif rest == "mall-orders":
                snap.kept[rest] = dict(client.zrange(key, 0, -1, withscores=True))
            elif rest.startswith("receipt:"):
                snap.kept[rest] = client.get(key)
            elif rest.startswith(BINDINGS):
                snap.bindings[rest] = client.hgetall(key) if rest.startswith("plate:") else client.get(key)
    finally:
        client.close()
    return snap


def redis_bytes(redis_url: str, namespace: str) -> tuple[int, int, int]:
    """(bytes of every key of the namespace as MEMORY USAGE counts them, keys, members)."""
    client = _client(redis_url)
    total = keys = members = 0
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            total += int(client.memory_usage(key, samples=0) or 0)
            keys += 1
            members += key.startswith(f"{namespace}:m:{{")
    finally:
        client.close()
    return total, keys, members


def wipe(redis_url: str, namespace: str) -> int:
    """Deletes every key of the namespace (Redis lost it); returns how many."""
    client = _client(redis_url)
    gone = 0
    try:
        batch: list[str] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                gone += client.delete(*batch)
                batch = []
        if batch:
            gone += client.delete(*batch)
    finally:
        client.close()
    return gone


def rebuild(env: dict[str, str], page: int = 500) -> subprocess.CompletedProcess[str]:
    """`loyalty rebuild` against the worker `env` names."""
    return subprocess.run([sys.executable, "-m", "streams.cli", "rebuild", "--page", str(page)], env=env,
                          capture_output=True, text=True, timeout=1800)


#: A worker restarted for the comparison runs no timer meanwhile (a due wallet check or tier
#: review would change a member between the two captures, which is not the rebuild's doing).
QUIET_TIMERS = {"LOYALTY_WALLET_CHECK_INTERVAL": "86400", "LOYALTY_TIER_REVIEW_INTERVAL": "86400"}


@dataclass
class Lost:
    """What `lose_and_rebuild` saw: the namespace before and after, keys wiped, the
    rebuild's run and how long it took."""

    before: Snapshot
    after: Snapshot
    wiped: int
    seconds: float
    rebuild: subprocess.CompletedProcess[str]


def lose_and_rebuild(worker: Any, page: int = 500) -> Lost:
    """Restarts the worker with its timers quiet and lets it apply whatever they had sent
    (so nothing moves while Redis is read), captures its namespace, wipes it, runs `loyalty
    rebuild` and captures again. The worker is left running."""
    worker.stop()
    worker.extra_env.update(QUIET_TIMERS)  # (`env` is built from it at each start)
    worker.start()
    worker.wait_caught_up(300)
    time.sleep(1)
    worker.wait_caught_up(300)  # and what the last of it sent on (the ledger rows)
    before = capture(worker.redis_url, worker.run_id)
    wiped = wipe(worker.redis_url, worker.run_id)
    t = time.monotonic()
    out = rebuild(worker.env, page)
    took = time.monotonic() - t
    return Lost(before, capture(worker.redis_url, worker.run_id), wiped, took, out)


@dataclass
class KindResult:
    """Members (or bindings) of one kind equal after the rebuild, of how many had any."""

    kind: str
    equal: int
    total: int
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.equal == self.total


def _by_key(kind: str, before: dict[str, Any], after: dict[str, Any]) -> KindResult:
    """One kind kept as key -> value: equal where the values are."""
    r = KindResult(kind, 0, 0)
    for k in sorted(set(before) | set(after)):
        r.total += 1
        if before.get(k) == after.get(k):
            r.equal += 1
        elif len(r.examples) < 5:
            r.examples.append(f"{k}: {before.get(k)} -> {after.get(k)}")
    return r


def compare(before: Snapshot, after: Snapshot) -> list[KindResult]:
    """Kind by kind: a member counts for a kind when it has any of the kind's fields
    before or after; equal when every such field is."""
    kinds = state_kinds({f for s in [*before.states.values(), *after.states.values()] for f in s})
    out: list[KindResult] = []
    members = sorted(set(before.states) | set(after.states))
    for kind, fields in kinds.items():
        r = KindResult(kind, 0, 0)
        for m in members:
            a, b = before.states.get(m), after.states.get(m)
            pa, pb = kind_parts(a, fields), kind_parts(b, fields)
            if not pa and not pb:
                continue
            r.total += 1
            if a is not None and b is not None and pa == pb:
                r.equal += 1
            elif len(r.examples) < 5:
                r.examples.append(f"{m}: {pa} -> {pb}")
        out.append(r)
    out.append(_by_key("balances and counters", before.counters, after.counters))
    out.append(_by_key("leaderboards", before.boards, after.boards))
    out.append(_by_key("refunds held for their payment", before.held, after.held))
    out.append(_by_key("guest payments waiting for their payer", before.guests, after.guests))
    out.append(_by_key("parking sessions, gateway routes, mall orders, receipt claims", before.kept, after.kept))
    out.append(_by_key("bindings (ids, plates, referral phones)", before.bindings, after.bindings))
    return out
