"""A pipelined channel for the accrual plan: RESP commands the Rust core built, sent as
one write, their replies parsed by hiredis (the C parser redis-py itself uses).

redis-py would re-encode every argument in Python and await each reply on its own;
the hot path sends thousands of ready-made commands per batch, so it writes their
bytes as they are and reads the replies in bulk. Connections are opened from the same
URL as the redis-py client (redis:// or unix://, password, database). A connection
that fails is dropped; the error is redis-py's ConnectionError or TimeoutError, which
the agents treat as transient.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlparse

import hiredis
import redis.exceptions
from redis.asyncio.connection import parse_url

from streams.errors import TransientError

log = logging.getLogger(__name__)

#: Error replies that mean "try again later" (the batch is retried).
TRANSIENT_REPLIES = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "NOREPLICAS")


def pack(*args: bytes | str | int) -> bytes:
    """One command as RESP bytes (for the few this module sends itself)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class RedisRestarted(TransientError, redis.exceptions.ConnectionError):
    """Redis is not the process the store started with (it restarted, perhaps from an AOF
    that lacks its last writes) and no repair has marked the new one as checked: nothing is
    applied on it until then (a transient error: callers retry)."""


def run_id_of(info: bytes) -> str:
    """The `run_id` of an `INFO server` reply."""
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return line[7:].strip().decode()
    raise redis.exceptions.ResponseError("INFO server has no run_id")


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    async def roundtrip(self, payload: bytes, n: int) -> list[Any]:
        self.writer.write(payload)
        await self.writer.drain()
        out: list[Any] = []
        while len(out) < n:
            reply = self.parser.gets()
            if reply is False:
                chunk = await self.reader.read(1 << 20)
                if not chunk:
                    raise redis.exceptions.ConnectionError("Redis closed the connection mid-reply")
                self.parser.feed(chunk)
                continue
            out.append(reply)
        return out

    def close(self) -> None:
        self.writer.close()


class RawChannel:
    """A few raw connections to one Redis; `run` sends commands and returns their replies."""

    def __init__(self, url: str, size: int = 4, timeout_s: float = 30.0) -> None:
        scheme = urlparse(url).scheme
        if scheme not in ("redis", "unix"):
            raise ValueError(f"the accrual channel speaks redis:// or unix:// only, not {scheme}://")
        self.params: dict[str, Any] = cast(dict[str, Any], parse_url(url))
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(size)
        #: The Redis process (`run_id`) this channel applies to; None: not checked (a
        #: cluster node, whose replica takes over by design). A new connection to another
        #: process is refused (RedisRestarted) until `marker_key` names that process.
        self.expected_run_id: str | None = None
        self.marker_key: bytes = b""
        #: The run_id of a restarted Redis seen and not yet repaired (for the repair timer).
        self.restart_seen: str | None = None

    @classmethod
    def to_node(cls, params: dict[str, Any], host: str, port: int, size: int = 4,
                timeout_s: float = 30.0) -> RawChannel:
        """A channel to one node of a cluster, with the credentials of `params` (a parsed URL)."""
        channel = cls("redis://127.0.0.1", size, timeout_s)
        channel.params = {k: v for k, v in params.items() if k not in ("path", "db")} | {"host": host, "port": port}
        return channel

    async def _connect(self) -> _Conn:
        p = self.params
        if "path" in p:
            reader, writer = await asyncio.open_unix_connection(p["path"])
        else:
            reader, writer = await asyncio.open_connection(p.get("host", "127.0.0.1"), p.get("port", 6379))
        conn = _Conn(reader, writer)
        hello: list[bytes] = []
        if p.get("password"):
            hello.append(pack("AUTH", p["username"], p["password"]) if p.get("username")
                         else pack("AUTH", p["password"]))
        if p.get("db"):
            hello.append(pack("SELECT", p["db"]))
        if hello:
            for reply in await conn.roundtrip(b"".join(hello), len(hello)):
                if isinstance(reply, hiredis.ReplyError):
                    conn.close()
                    raise redis.exceptions.AuthenticationError(f"Redis refused the accrual channel: {reply}")
        if self.expected_run_id is not None:
            info, marker = await conn.roundtrip(pack("INFO", "server") + pack("GET", self.marker_key), 2)
            if isinstance(info, hiredis.ReplyError) or isinstance(marker, hiredis.ReplyError):
                conn.close()  # LOADING: Redis is reading its AOF
                why = info if isinstance(info, hiredis.ReplyError) else marker
                raise redis.exceptions.ConnectionError(f"Redis is not ready: {why}")
            run_id = run_id_of(info)
            if run_id != self.expected_run_id:
                if marker is not None and marker.decode() == run_id:
                    log.warning("Redis restarted (run %s, was %s) and was repaired: applying again", run_id,
                                self.expected_run_id)
                    self.expected_run_id = run_id
                    self.restart_seen = None
                else:
                    conn.close()
                    if self.restart_seen != run_id:
                        log.error("Redis restarted (run %s, was %s): nothing is applied until `loyalty reconcile "
                                  "--repair` (or the worker holding the ledger, by itself) has checked it against "
                                  "the durable facts", run_id, self.expected_run_id)
                    self.restart_seen = run_id
                    raise RedisRestarted(f"Redis restarted (run {run_id}): waiting for the repair")
        return conn

    async def run(self, commands: Sequence[bytes], replicate: bool = False) -> list[Any]:
        """Sends the commands in one write and returns their replies in order (an error
        reply is a hiredis.ReplyError in its place, not raised). `replicate` is the cluster
        channel's (a single Redis has no replica to wait for)."""
        if not commands:
            return []
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is not None:
                    try:
                        replies = await asyncio.wait_for(conn.roundtrip(b"".join(commands), len(commands)),
                                                         self.timeout_s)
                        self._idle.append(conn)
                        return replies
                    except (OSError, redis.exceptions.ConnectionError):
                        # A pooled connection to a Redis that went away (restarted): the
                        # others are dead too. Sent once more on a new connection (which
                        # checks the process it reaches); every plan is idempotent.
                        conn.close()
                        conn = None
                        while self._idle:
                            self._idle.pop().close()
                conn = await asyncio.wait_for(self._connect(), self.timeout_s)
                replies = await asyncio.wait_for(conn.roundtrip(b"".join(commands), len(commands)), self.timeout_s)
            except TimeoutError as exc:
                if conn is not None:
                    conn.close()
                raise redis.exceptions.TimeoutError(f"Redis did not answer {len(commands)} commands in time") from exc
            except (OSError, hiredis.ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                raise redis.exceptions.ConnectionError(f"Redis connection failed: {exc!r}") from exc
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._idle.append(conn)
            return replies

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def raise_for_errors(replies: Sequence[Any], what: str) -> None:
    """Raises for the first error reply: transient ones as redis-py's ConnectionError (the
    batch is retried), the rest as ResponseError."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.split(" ", 1)[0] in TRANSIENT_REPLIES:
                raise redis.exceptions.ConnectionError(f"{what}: Redis answered {text}")
            raise redis.exceptions.ResponseError(f"{what}: Redis answered {text}")
