"""The accrual channel on a Redis Cluster: the core's commands routed by hash slot.

Every command a plan holds names the keys of one slot (tests/unit/test_redis_slots.py
checks it), so each goes to the primary that serves its slot: the commands are grouped
per primary (keeping their order within it), each group is sent in one write over a raw
channel to that node, the groups run at the same time, and the replies are put back in the
plan's order. The slot map is redis-py's (`RedisCluster`, which the HTTP paths use too);
a MOVED or ASK reply, or a node that cannot be reached (a primary died and its replica is
being promoted), refreshes it and raises a transient error: the batch is retried, and every
step of a plan is idempotent. Commands sent to different primaries have no order between
them: a caller that needs one step before another runs them as two plans.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from streams.metrics import counters
from streams.state.resp import RawChannel, pack

log = logging.getLogger(__name__)

#: Commands whose first key is their fourth argument (name, function, numkeys, key...).
_KEYS_AT_3 = (b"FCALL", b"FCALL_RO", b"EVALSHA", b"EVAL")


def first_key(command: bytes) -> bytes:
    """The first key of one RESP command (an array of bulk strings): the second argument,
    or the fourth of FCALL / EVALSHA. Raises ValueError for a command without a key."""
    at = command.index(b"\r\n") + 2
    args: list[bytes] = []
    want = 2
    while len(args) < want:
        if command[at:at + 1] != b"$":
            raise ValueError(f"not a RESP array of bulk strings: {command[:40]!r}")
        nl = command.index(b"\r\n", at)
        length = int(command[at + 1:nl])
        args.append(command[nl + 2:nl + 2 + length])
        at = nl + 2 + length + 2
        if len(args) == 1 and args[0].upper() in _KEYS_AT_3:
            want = 4
        if at >= len(command) and len(args) < want:
            raise ValueError(f"{args[0]!r} names no key")
    if want == 4 and int(args[2]) < 1:
        raise ValueError(f"{args[0]!r} names no key")
    return args[want - 1]


class ClusterChannel:
    """`run(commands)` like RawChannel's, over the primaries of a Redis Cluster."""

    def __init__(self, client: RedisCluster, params: dict[str, Any], size: int = 4, timeout_s: float = 30.0,
                 wait_replicas: int = 1, wait_ms: int = 100) -> None:
        self.client = client
        self.params = params
        self.wait = pack("WAIT", wait_replicas, wait_ms) if wait_replicas > 0 else None
        self.wait_replicas = wait_replicas
        self._short_logged = 0.0
        self.size = size
        self.timeout_s = timeout_s
        self._nodes: dict[str, RawChannel] = {}
        self._refreshing: asyncio.Lock | None = None

    def _node(self, host: str, port: int) -> RawChannel:
        name = f"{host}:{port}"
        channel = self._nodes.get(name)
        if channel is None:
            channel = RawChannel.to_node(self.params, host, port, self.size, self.timeout_s)
            self._nodes[name] = channel
        return channel

    async def refresh(self, why: str) -> None:
        """Reads the slot map again (after a failover or a resharding)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            log.warning("Redis Cluster: %s; reading the slot map again", why)
            try:
                await self.client.nodes_manager.initialize()
            except (redis.exceptions.RedisError, OSError) as exc:
                raise redis.exceptions.ConnectionError(f"Redis Cluster slot map unavailable: {exc!r}") from exc

    async def run(self, commands: Sequence[bytes], replicate: bool = False) -> list[Any]:
        """Replies in the commands' order. `replicate`: each primary's group ends with a WAIT
        on the same connection (WAIT counts that connection's writes), so the plan returns
        once every replica has them, or the wait timed out (logged and counted: the writes
        are then on their primary only, and a failover before the replica catches up loses
        them to Redis; `loyalty reconcile --repair` restores them from the durable facts)."""
        if not commands:
            return []
        await self.client.initialize()
        nodes = self.client.nodes_manager
        groups: dict[tuple[str, int], list[int]] = {}
        for i, command in enumerate(commands):
            try:
                node = nodes.get_node_from_slot(key_slot(first_key(command)))
            except redis.exceptions.SlotNotCoveredError as exc:
                await self.refresh(str(exc))
                raise redis.exceptions.ConnectionError(f"Redis Cluster: {exc}") from exc
            groups.setdefault((node.host, int(node.port)), []).append(i)
        order = list(groups.items())
        wait = self.wait if replicate else None
        results = await asyncio.gather(*(self._node(host, port).run([commands[i] for i in idx]
                                                                    + ([wait] if wait else []))
                                         for (host, port), idx in order), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.refresh(f"{len(failed)} of {len(order)} primaries failed ({failed[0]!r})")
            for r in failed:
                if not isinstance(r, redis.exceptions.RedisError | OSError):
                    raise r
            raise redis.exceptions.ConnectionError(f"Redis Cluster: {failed[0]}") from failed[0]
        replies: list[Any] = [None] * len(commands)
        moved = None
        short = []
        for ((host, port), idx), got in zip(order, results, strict=True):
            if wait:
                acked = got.pop()  # type: ignore[union-attr]
                if not isinstance(acked, int) or acked < self.wait_replicas:
                    short.append(f"{host}:{port} ({acked!r})")
            for i, reply in zip(idx, got, strict=True):  # type: ignore[arg-type]
                if isinstance(reply, hiredis.ReplyError) and str(reply).split(" ", 1)[0] in ("MOVED", "ASK"):
                    moved = str(reply)
                replies[i] = reply
        if short:
            counters["redis_wait_short_total"] += len(short)
            now = time.monotonic()
            if now - self._short_logged > 60:
                self._short_logged = now
                log.warning("Redis Cluster: fewer than %d replica(s) confirmed the writes of %s in time: they "
                            "are on their primary only until the replica catches up", self.wait_replicas,
                            ", ".join(short))
        if moved is not None:
            await self.refresh(moved)
            raise redis.exceptions.ConnectionError(f"Redis Cluster: slot moved ({moved}); the plan is sent again")
        return replies

    async def close(self) -> None:
        for channel in self._nodes.values():
            await channel.close()
        self._nodes.clear()
