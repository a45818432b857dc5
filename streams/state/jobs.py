"""Long jobs a worker can die in the middle of: audience sends, campaign runs, merges and
erasures. Each has a record (a plain key with an expiry) and, while it is in progress, an
entry in its kind's index of open jobs (`<ns>:open:<kind>`, scored by when the job was last
saved open). The timers that take up a stalled job read that index instead of scanning the
keyspace: four SCANs of every key every 5-10 s were Redis's largest cost under a steady
load, and grow with the number of members.

A job in progress is in the index before its record says so, and leaves it only after its
record says it ended, so a worker dying between the two writes never hides one. An entry
whose record is gone (expired) or ended is dropped by the reader once it has not been saved
open for `STALE_ENTRY_MS`, and only if it was not saved open again meanwhile (a script on
the index's own key)."""

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
    """Records of long jobs and the index of the open ones."""

    def job_key(self, kind: str, job_id: str) -> str:
        """The record of a job: the kind's key of keys.py (`audience_send_key`, ...); a
        campaign run's id is `<campaign>:<run>`."""
        _check_kind(kind)
        return f"{self.ns}:{kind}:{job_id}"

    async def load_job(self, kind: str, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.job_key(kind, job_id))
        return None if raw is None else orjson.loads(raw)  # type: ignore[no-any-return]

    async def save_job(self, kind: str, job_id: str, job: dict[str, Any], keep_s: int, *,
                       create: bool = False) -> bool:
        """Saves a job's record for `keep_s`. `create`: only if it has none (False if it had)."""
        is_open = job["status"] in OPEN_STATUSES[kind]
        index = self.open_jobs_key(kind)
        if is_open:
            await self.redis.zadd(index, {job_id: int(time.time() * 1000)})
        stored = await self.redis.set(self.job_key(kind, job_id), orjson.dumps(job), ex=keep_s, nx=create)
        if stored and not is_open:
            await self.redis.zrem(index, job_id)
        return bool(stored)

    async def open_jobs(self, kind: str) -> list[dict[str, Any]]:
        """The records of the kind's jobs in progress (the open ones saved before the index
        existed are indexed first, once: `index_once`)."""
        await self.index_once(kind, self.job_key(kind, "*"), functools.partial(self._index_open_job, kind))
        index = self.open_jobs_key(kind)
        scored: list[tuple[str | bytes, float]] = await self.redis.zrange(  # type: ignore[assignment]
            index, 0, -1, withscores=True)
        entries = [(_text(job_id), float(score)) for job_id, score in scored]
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id, _ in entries:
            pipe.get(self.job_key(kind, job_id))
        now = int(time.time() * 1000)
        out = []
        for (job_id, marked), raw in zip(entries, await pipe.execute(), strict=True):
            job = None if raw is None else orjson.loads(raw)
            if job is not None and job.get("status") in OPEN_STATUSES[kind]:
                out.append(job)
            elif now - marked > STALE_ENTRY_MS:
                await self.redis.eval(_DROP_IF_UNCHANGED, 1, index, job_id, int(marked))
        return out

    async def _index_open_job(self, kind: str, key: str, raw: bytes | str) -> None:
        if orjson.loads(raw).get("status") in OPEN_STATUSES[kind]:
            job_id = key[len(self.job_key(kind, "")):]
            await self.redis.zadd(self.open_jobs_key(kind), {job_id: int(time.time() * 1000)}, nx=True)

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


def _check_kind(kind: str) -> None:
    if kind not in OPEN_STATUSES:
        raise ValueError(f"no kind of job {kind!r}: one of {', '.join(OPEN_STATUSES)}")


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v
