"""The connection every store of streams/state shares: one redis-py pool for the
commands of the HTTP paths and timers, one raw RESP channel (resp.py) for the plans the
core builds, the Redis Functions of functions.lua, and the start-up checks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url

from streams.state.cluster import ClusterChannel
from streams.state.keys import KeySpace
from streams.state.resp import RawChannel, raise_for_errors

log = logging.getLogger(__name__)

FUNCTIONS_PATH = Path(__file__).with_name("functions.lua")
DAY_MS = 86_400_000
#: Redis settings the records rely on: small hashes stay in the compact listpack encoding.
LISTPACK_SETTINGS = {"hash-max-listpack-value": 512, "hash-max-listpack-entries": 512}


class StoreBase(KeySpace):
    """A connection to Redis over the engine's key space; each concern's store adds its steps."""

    def __init__(self, url: str, namespace: str, horizon_days: int = 400, history_len: int = 10,
                 members_per_call: int = 1, wait_replicas: int = 1, wait_ms: int = 100) -> None:
        super().__init__(namespace)
        self.url = url
        self.horizon_days = horizon_days
        self.history_len = history_len
        #: Members the accrual writes per ly_apply call; 1 once `setup` finds a cluster.
        self.members_per_call = members_per_call
        #: On a cluster: replicas a replicated write waits for (WAIT), and for how long.
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        # A blocking pool: under a burst, requests wait for a free connection (up to 10 s)
        # instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=128, timeout=10)
        #: Decodes its replies (decode_responses; the cluster client of `_use_cluster` too): str,
        #: never bytes, where redis-py types a reply `bytes | str`, hence the stores' casts to str.
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.channel: RawChannel | ClusterChannel = RawChannel(url)
        #: For writes that are safe on a Redis that restarted before its repair (leaderboard
        #: scores: absolute, the newest version wins; the ledger sink's, which the repair
        #: waits for): never held back by the restart check.
        self.side_channel: RawChannel | ClusterChannel = RawChannel(url)
        #: True once `setup` finds the URL names a node of a Redis Cluster.
        self.cluster = False

    async def setup(self) -> None:
        """Connects, loads the functions and checks the encoding settings, so a bad URL
        fails at start rather than on the first batch. A URL naming any node of a Redis
        Cluster switches the store to a cluster-aware client (redis-py's RedisCluster, which
        finds the other nodes) and the accrual channel to one routed by slot."""
        await self.redis.ping()
        config = cast(dict[str, str], await self.redis.config_get("hash-max-listpack-*"))
        if int((await self.redis.info("cluster")).get("cluster_enabled", 0)):
            await self._use_cluster()
            # Every ly_apply call names one hash slot: one member per call.
            self.members_per_call = 1
        elif isinstance(self.channel, RawChannel):
            # A single Redis: the raw channel applies to this process of it only; after a
            # restart it waits for a repair (docs/reliability.md).
            self.channel.expected_run_id = str((await self.redis.info("server"))["run_id"])
            self.channel.marker_key = self.repaired_key.encode()
        await self.load_functions()
        low = {k: v for k, v in LISTPACK_SETTINGS.items() if int(config.get(k, v)) < v}
        if low:
            log.warning("Redis %s below %s: event records take several times the memory (docs/scaling.md)",
                        config, LISTPACK_SETTINGS)

    async def _use_cluster(self) -> None:
        params = parse_url(self.url)
        if "path" in params or str(params.get("db") or 0) != "0":
            raise ValueError(f"{self.url}: a Redis Cluster is reached over TCP and has database 0 only")
        single = self.redis
        self.redis = RedisCluster.from_url(self.url, decode_responses=True, max_connections=128)  # type: ignore[assignment]
        await self.redis.initialize()  # type: ignore[attr-defined]
        await single.aclose()
        await self.channel.close()
        await self.side_channel.close()
        self.channel = ClusterChannel(self.redis, params, wait_replicas=self.wait_replicas,  # type: ignore[arg-type]
                                      wait_ms=self.wait_ms)
        self.side_channel = self.channel
        self.cluster = True
        primaries = self.redis.get_primaries()  # type: ignore[attr-defined]
        log.info("Redis is a cluster of %d primaries: a cluster-aware client, the accrual routed by slot, "
                 "one member per ly_apply call (each call names one hash slot)", len(primaries))

    async def restart_unrepaired(self) -> str | None:
        """The run_id of the Redis now running if it is not the process this store started
        on (or last saw repaired) and no repair has marked it: the accrual waits on it."""
        if not isinstance(self.channel, RawChannel) or self.channel.expected_run_id is None:
            return None
        run_id = str((await self.redis.info("server"))["run_id"])
        if run_id == self.channel.expected_run_id or await self.redis.get(self.repaired_key) == run_id:
            return None
        return run_id

    async def mark_repaired(self) -> str:
        """Records that the Redis now running has been checked against the durable facts
        (after `repair`): channels waiting on its restart apply again. Its run_id."""
        run_id = str((await self.redis.info("server"))["run_id"])
        await self.redis.set(self.repaired_key, run_id)
        if isinstance(self.channel, RawChannel) and self.channel.expected_run_id is not None:
            self.channel.expected_run_id = run_id
            self.channel.restart_seen = None
        return run_id

    async def load_functions(self) -> None:
        await self.redis.function_load(FUNCTIONS_PATH.read_text(), replace=True)

    async def close(self) -> None:
        await self.channel.close()
        if self.side_channel is not self.channel:
            await self.side_channel.close()
        await self.redis.aclose()

    async def run(self, commands: Sequence[bytes], what: str, replicate: bool = False,
                  side: bool = False) -> list[Any]:
        """Sends a plan's commands; reloads the functions if Redis lost them (a flush, a new
        server) and raises a transient error so the batch is retried. `replicate`: on a
        cluster, each primary written waits for its replica to have the writes (WAIT).
        `side`: on the side channel, not held back after a Redis restart."""
        replies = await (self.side_channel if side else self.channel).run(commands, replicate)
        try:
            raise_for_errors(replies, what)
        except redis.exceptions.ResponseError as exc:
            if "Function not found" in str(exc) or "NOSCRIPT" in str(exc):
                log.warning("%s; loading the functions again", exc)
                await self.load_functions()
                raise redis.exceptions.ConnectionError(f"{what}: functions were missing, loaded again") from exc
            raise
        return replies
