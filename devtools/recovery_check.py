"""Redis lost and rebuilt, checked kind by kind: every member's complete state and every
binding of a worker's namespace captured, the namespace wiped (as if Redis had lost it),
`loyalty rebuild` run, the state captured again and compared per kind. The demo day ends
with it; tests/integration/test_rebuild_everything.py drives it too."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

#: The member state's fields (core_ext/src/state.rs), by the kind of fact they are.
KINDS: dict[str, tuple[str, ...]] = {
    "points and lots": ("lots", "pending", "neg", "owed", "earned_recent", "campaigns", "day", "earned_day"),
    "tier and override": ("tier", "tier_since_ms", "review_at_ms", "override_tier", "override_until_ms", "qual",
                          "review_day", "reviews_today"),
    "coupons": ("coupons", "birthday_coupon_year", "reminded_month"),
    "profile, tags and segments": ("registered_at_ms", "birthday", "tags", "segment_tags", "segment",
                                   "profile_fields", "profile_rewarded", "referral_month", "referrals_month",
                                   "referrals_total", "birthday_bonus_year"),
    "holds": ("holds",),
    "engagement (plans, games, streaks, tasks, boards)": (
        "plans", "game_plays", "cards", "sign_in_last_day", "sign_in_streak", "task_month", "task_spend_fen",
        "task_done", "spend_last_day", "spend_streak", "boards"),
    "stored value": ("sv_fen",),
    "partner exchanges": ("exchanges", "exchange_days"),
    "trigger history (last visit, formats, spend by day)": ("last_paid_ms", "formats_seen", "spend_days",
                                                            "spend_day", "spend_by_bu"),
}
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


def _client(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True)


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
            elif rest.startswith("parked:"):
                snap.held[rest] = client.lrange(key, 0, -1)
            elif rest == "held":
                snap.held[rest] = dict(client.zrange(key, 0, -1, withscores=True))
            elif rest.startswith(BINDINGS):
                snap.bindings[rest] = client.hgetall(key) if rest.startswith("plate:") else client.get(key)
    finally:
        client.close()
    return snap


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


def compare(before: Snapshot, after: Snapshot) -> list[KindResult]:
    """Kind by kind: a member counts for a kind when it has any of the kind's fields
    before or after; equal when every such field is."""
    known = {f for fields in KINDS.values() for f in fields}
    extra = sorted({f for s in [*before.states.values(), *after.states.values()] for f in s} - known)
    kinds = {**KINDS, **({"other state fields": tuple(extra)} if extra else {})}
    out: list[KindResult] = []
    members = sorted(set(before.states) | set(after.states))
    for kind, fields in kinds.items():
        r = KindResult(kind, 0, 0)
        for m in members:
            a, b = before.states.get(m), after.states.get(m)
            pa = {f: a.get(f) for f in fields if a is not None and f in a}
            pb = {f: b.get(f) for f in fields if b is not None and f in b}
            if not pa and not pb:
                continue
            r.total += 1
            if a is not None and b is not None and pa == pb:
                r.equal += 1
            elif len(r.examples) < 5:
                r.examples.append(f"{m}: {pa} -> {pb}")
        out.append(r)
    r = KindResult("balances and counters", 0, 0)
    for m in sorted(set(before.counters) | set(after.counters)):
        r.total += 1
        if before.counters.get(m) == after.counters.get(m):
            r.equal += 1
        elif len(r.examples) < 5:
            r.examples.append(f"{m}: {before.counters.get(m)} -> {after.counters.get(m)}")
    out.append(r)
    r = KindResult("refunds held for their payment", 0, 0)
    for k in sorted(set(before.held) | set(after.held)):
        r.total += 1
        if before.held.get(k) == after.held.get(k):
            r.equal += 1
        elif len(r.examples) < 5:
            r.examples.append(f"{k}: {before.held.get(k)} -> {after.held.get(k)}")
    out.append(r)
    r = KindResult("bindings (ids, plates, referral phones)", 0, 0)
    for k in sorted(set(before.bindings) | set(after.bindings)):
        r.total += 1
        if before.bindings.get(k) == after.bindings.get(k):
            r.equal += 1
        elif len(r.examples) < 5:
            r.examples.append(f"{k}: {before.bindings.get(k)} -> {after.bindings.get(k)}")
    out.append(r)
    return out
