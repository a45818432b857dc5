"""Long jobs a worker can die in the middle of: audience sends, campaign runs, merges and
erasures. Each has a record (a plain key with an expiry) and two indexes per kind, scored
by the job's last save: every job whose record is kept (`<ns>:jobs:<kind>`, for the
listings and an erasure's sweep) and the jobs in progress (`<ns>:open:<kind>`, for the
timers that take up a stalled job). Both replace scans of the keyspace: four SCANs of every
key every 5-10 s were Redis's largest cost under a steady load, and grow with the members.

A job is in its indexes before its record says it is in progress, and leaves the open one
only after its record says it ended, so a worker dying between the two writes never hides
one. An entry whose record is gone (expired, erased) or ended is dropped by a reader once
it has not been saved for `STALE_ENTRY_MS`, and only if it was not saved again meanwhile (a
script on the index's own key)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from streams.state.base import StoreBase

#: The kinds of job and the statuses in which each is in progress.
OPEN_STATUSES: dict[str, frozenset[str]] = {
    "audience-send": frozenset({"sending"}),
    "campaign-run": frozenset({"sending"}),
    "merge": frozenset({"merging", "undoing"}),
    "erasure": frozenset({"erasing"}),
}
#: How long each kind's record is kept after its last save.
KEEP_S: dict[str, int] = {
    "audience-send": 30 * 86_400,  # its coupons are the members' durable facts
    "campaign-run": 40 * 86_400,  # the audit trail has each run finished
    "merge": 67 * 86_400,  # past the longest undo window (LOYALTY_MERGE_UNDO_DAYS, 60 at most)
    "erasure": 400 * 86_400,  # no member id in it once done: answers a repeated request
}
#: The kinds whose jobs go to a list of members (kept in a key of its own).
MEMBER_LISTS = ("audience-send", "campaign-run")
#: An index entry whose record is gone (or whose job ended) is dropped after this long
#: (never sooner: a save may be between its index entry and its record).
STALE_ENTRY_MS = 60_000

# Drops an index entry only while its score is the one the reader saw (no open save since).
_DROP_IF_UNCHANGED = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class JobStore(StoreBase):
    """Records of long jobs, the index of all of them and the index of the open ones."""

    def job_key(self, kind: str, job_id: str) -> str:
        """The record of a job: the kind's key of keys.py (`audience_send_key`, ...); a
        campaign run's id is `<campaign>:<run>`."""
        _check_kind(kind)
        return f"{self.ns}:{kind}:{job_id}"

    def job_members_key(self, kind: str, job_id: str) -> str:
        """The members a send or a run goes to, written once (`<kind>-members:<id>`): the
        record, saved after every page, stays small."""
        if kind not in MEMBER_LISTS:
            raise ValueError(f"a {kind} has no members' list: only {', '.join(MEMBER_LISTS)}")
        return f"{self.ns}:{kind}-members:{job_id}"

    async def job_members(self, kind: str, job_id: str, job: dict[str, Any]) -> list[str]:
        """The members of a send or a run. A record saved with its members in it (before
        they had a key of their own) has them moved out: its next save is small."""
        if "members" in job:
            members: list[str] = job.pop("members")
            job["total"] = len(members)
            await self.redis.set(self.job_members_key(kind, job_id), orjson.dumps(members), nx=True,
                                 ex=KEEP_S[kind])
            return members
        raw = await self.redis.get(self.job_members_key(kind, job_id))
        return [] if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def members_to_send(self, kind: str, job_id: str, job: dict[str, Any]) -> list[str] | None:
        """The members of a send or a run about to go on; None, the job saved as failed, if
        its members' list is gone or short (it must not finish having sent to nobody)."""
        members = await self.job_members(kind, job_id, job)
        if len(members) == job["total"]:
            return members
        job["status"], job["failed"] = "failed", f"its members' list is gone ({len(members)} of {job['total']})"
        await self.save_job(kind, job_id, job)
        return None

    async def set_job_members(self, kind: str, job_id: str, members: list[str]) -> None:
        """Replaces a send's or a run's members, keeping the key's expiry (an erasure)."""
        await self.redis.set(self.job_members_key(kind, job_id), orjson.dumps(members), xx=True, keepttl=True)

    async def load_job(self, kind: str, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.job_key(kind, job_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def save_job(self, kind: str, job_id: str, job: dict[str, Any], *, create: bool = False,
                       members: list[str] | None = None) -> bool:
        """Saves a job's record (kept `KEEP_S[kind]`). `create`: only if it has none (False
        if it had). `members` (a new send or run): its members, written first, once."""
        if "members" in job:
            raise ValueError("a job's members go in their own key (members=...), not in its record")
        is_open = job["status"] in OPEN_STATUSES[kind]
        index, now = self.open_jobs_key(kind), int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)  # keys of their own slots: no transaction
        if members is not None:
            pipe.set(self.job_members_key(kind, job_id), orjson.dumps(members), nx=True, ex=KEEP_S[kind])
        pipe.zadd(self.jobs_key(kind), {job_id: now})
        if is_open:
            pipe.zadd(index, {job_id: now})
        await pipe.execute()
        stored = await self.redis.set(self.job_key(kind, job_id), orjson.dumps(job), ex=KEEP_S[kind], nx=create)
        if stored and not is_open:
            await self.redis.zrem(index, job_id)
        return bool(stored)

    async def jobs(self, kind: str, prefix: str = "") -> list[dict[str, Any]]:
        """The records of the kind's jobs (all it keeps), the last saved first; `prefix`: only
        the ids that start with it (a campaign's runs: `<campaign>:`)."""
        await self._index_kind(kind)
        index, now = self.jobs_key(kind), int(time.time() * 1000)
        await self.redis.zremrangebyscore(index, "-inf", now - KEEP_S[kind] * 1000)
        scored: list[tuple[str | bytes, float]] = await self.redis.zrevrange(  # type: ignore[assignment]
            index, 0, -1, withscores=True)
        return await self._records(kind, index, [(i, at) for i, at in map(index_entry, scored) if i.startswith(prefix)],
                                   now, lambda job: True)

    async def open_jobs(self, kind: str) -> list[dict[str, Any]]:
        """The records of the kind's jobs in progress."""
        await self._index_kind(kind)
        index, now = self.open_jobs_key(kind), int(time.time() * 1000)
        scored: list[tuple[str | bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
            index, 0, -1, withscores=True)
        return await self._records(kind, index, [index_entry(e) for e in scored], now,
                                   lambda job: job.get("status") in OPEN_STATUSES[kind])

    async def _records(self, kind: str, index: str, entries: list[tuple[str, float]], now: int,
                       wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return await self.indexed_records(index, entries, now, functools.partial(self.job_key, kind), wanted)

    async def indexed_records(self, index: str, entries: list[tuple[str, float]], now: int,
                              key_of: Callable[[str], str],
                              wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The JSON records (at `key_of(id)`) of an index's (id, score) entries that are
        `wanted`, in the entries' order. An entry whose record is gone or not wanted is
        dropped once stale, unless saved again after this read."""
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for record_id, _ in entries:
            pipe.get(key_of(record_id))
        out = []
        for (record_id, marked), raw in zip(entries, await pipe.execute(), strict=True):
            record = None if raw is None else orjson.loads(raw)
            if record is not None and wanted(record):
                out.append(record)
            elif now - marked > STALE_ENTRY_MS:
                await self.redis.eval(_DROP_IF_UNCHANGED, 1, index, record_id, int(marked))
        return out

    async def _index_kind(self, kind: str) -> None:
        """Indexes the kind's records saved before its indexes existed (once: `index_once`)."""
        await self.index_once(kind, self.job_key(kind, "*"), functools.partial(self._index_job, kind))

    async def _index_job(self, kind: str, key: str, raw: bytes | str) -> None:
        job_id, now = key[len(self.job_key(kind, "")):], int(time.time() * 1000)
        await self.redis.zadd(self.jobs_key(kind), {job_id: now}, nx=True)
        if orjson.loads(raw).get("status") in OPEN_STATUSES[kind]:
            await self.redis.zadd(self.open_jobs_key(kind), {job_id: now}, nx=True)

    async def index_once(self, name: str, match: str, index: Callable[[str, bytes | str], Awaitable[None]]) -> None:
        """Indexes the records saved before their index existed: the first call on a Redis
        scans the keys matching `match` once and hands each record to `index`, then marks
        `name` indexed (`<ns>:jobs-indexed`) so that no later process scans again."""
        indexed: set[str] = self.__dict__.setdefault("_jobs_indexed", set())
        if name in indexed:
            return
        if not await self.redis.sismember(self.jobs_indexed_key, name):
            async for key in self.redis.scan_iter(match=match, count=1000):
                raw = await self.redis.get(key)
                if raw is not None:
                    await index(_text(key), raw)
            await self.redis.sadd(self.jobs_indexed_key, name)
        indexed.add(name)


def public_job(job: dict[str, Any]) -> dict[str, Any]:
    """A send or a run as the API shows it: how many members, not who (a record saved before
    the members had a key of their own still holds them)."""
    return {k: v for k, v in job.items() if k != "members"} | {
        "total": job["total"] if "total" in job else len(job["members"])}


def _check_kind(kind: str) -> None:
    if kind not in OPEN_STATUSES:
        raise ValueError(f"no kind of job {kind!r}: one of {', '.join(OPEN_STATUSES)}")


def index_entry(scored: tuple[str | bytes, float]) -> tuple[str, float]:
    """A sorted set's (member, score) reply as (id, score)."""
    return _text(scored[0]), float(scored[1])


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v
