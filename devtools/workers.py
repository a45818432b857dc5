"""Running a worker as a child process and talking to it: for the demo, the tests and
the benchmarks (over 400 lines: the worker process, the signed senders and the webhook
receiver that the tests drive it with). Each run gets its own topics, consumer group, Redis namespace and
ClickHouse directory, so runs never see each other's data.

Over 400 lines: the worker process, its signed HTTP client, the webhook receiver and the
clean-up of a run's topics and keys belong together (every test and benchmark uses them
as a set); the demo, a packaged command, uses them too, which is why they ship."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import ROOT
from streams.signing import SignatureError, signed_headers, verify

log = logging.getLogger(__name__)


def redis_client(url: str, **kwargs: Any) -> Any:
    """A synchronous redis-py client for `url`: a RedisCluster when the node it names is
    part of a cluster (its SCAN walks every primary, its UNLINK splits keys by slot)."""
    import redis

    single = redis.Redis.from_url(url, **kwargs)
    try:
        if not int(single.info("cluster").get("cluster_enabled", 0)):
            return single
    except redis.exceptions.RedisError:
        return single
    single.close()
    return redis.RedisCluster.from_url(url, **kwargs)

def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload or b"null")
    except orjson.JSONDecodeError:
        return payload.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_run_data(kafka_bootstrap: str, redis_url: str, prefix: str) -> None:
    """Deletes the topics whose names start with `prefix` and the Redis keys under
    `prefix:` (a test run's namespace)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def drop_topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()

    asyncio.run(drop_topics())
    r = redis_client(redis_url)
    try:
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                r.unlink(*batch)
                batch.clear()
        if batch:
            r.unlink(*batch)
    finally:
        r.close()


#: The namespaces benchmark runs use (benchmarks/): `scripts/bench` removes what killed runs
#: left under them before it measures.
BENCH_PREFIXES = ("bench-", "lat-", "ceil-", "ing-", "soak-", "naive-bench-", "noop-bench-", "t-")


def remove_test_leftovers(kafka_bootstrap: str, redis_url: str, prefixes: tuple[str, ...] = ("t-",)) -> tuple[int, int]:
    """Deletes what earlier test runs on this machine left behind (a run killed before its
    cleanup): topics and Redis keys whose names start with one of `prefixes` (tests: `t-`).
    Returns (topics, keys) deleted. A local Kafka with hundreds of stale partitions is slow
    to serve new ones, and a Redis holding a killed benchmark's keys rewrites them with its
    AOF during every later run."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def drop_topics() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefixes)]
            for i in range(0, len(topics), 200):
                await admin.delete_topics(topics[i:i + 200])
            return len(topics)
        finally:
            await admin.close()

    dropped = asyncio.run(drop_topics())
    r = redis_client(redis_url)
    removed = 0
    try:
        for prefix in prefixes:
            keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                removed += r.unlink(*keys[i:i + 1000])
    finally:
        r.close()
    return dropped, removed


@dataclass
class WorkerProcess:
    """A `loyalty worker` child process with an isolated namespace."""

    run_id: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    callback_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    pos_key_id: str = "pos-test"
    pos_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    member_token_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    pii_key: str = field(default_factory=lambda: secrets.token_hex(16))
    #: The console's session key (a Fernet key: 32 random bytes, url-safe base64).
    console_session_key: str = field(default_factory=lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    extra_env: dict[str, str] = field(default_factory=dict)
    #: More arguments of `loyalty worker` (e.g. `--processes 2`).
    args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LOYALTY_APP_ID": self.run_id,
                "LOYALTY_TOPIC_PREFIX": self.run_id,
                "LOYALTY_REDIS_NAMESPACE": self.run_id,
                "LOYALTY_CLICKHOUSE_DSN": f"chdb://{self.data_dir / 'chdb'}",
                "LOYALTY_WEB_PORT": str(self.port),
                "LOYALTY_CALLBACK_SECRET": self.callback_secret,
                "LOYALTY_ADMIN_TOKEN": self.admin_token,
                "LOYALTY_POS_KEYS": f"{self.pos_key_id}:{self.pos_secret}",
                "LOYALTY_MEMBER_TOKEN_SECRET": self.member_token_secret,
                "LOYALTY_PII_KEY": self.pii_key,
                "LOYALTY_CONSOLE_SESSION_KEY": self.console_session_key,
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.data_dir / "worker.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        """Deletes what this run left in the shared services: its topics (they start
        with the run id, Faust's own included) and its Redis keys. Without it a local
        Kafka collects thousands of partitions and takes minutes to start."""
        remove_run_data(self.env["LOYALTY_KAFKA_BOOTSTRAP"] if "LOYALTY_KAFKA_BOOTSTRAP" in self.env
                        else f"127.0.0.1:{self.env.get('LOYALTY_KAFKA_PORT', '9092')}",
                        self.env.get("LOYALTY_REDIS_URL")
                        or f"redis://127.0.0.1:{self.env.get('LOYALTY_REDIS_PORT', '6380')}/0",
                        self.run_id)

    @property
    def redis_url(self) -> str:
        """The Redis this worker uses."""
        return (self.env.get("LOYALTY_REDIS_URL")
                or f"redis://127.0.0.1:{self.env.get('LOYALTY_REDIS_PORT', '6380')}/0")

    def keys_out_of_bounds(self) -> list[str]:
        """Keys of this run's namespace that no family of streams/state/keys.py describes,
        or of a family whose keys expire but that carry no expiry (what would grow without
        a bound): empty when Redis holds only what it should."""

        from streams.state.keys import family_of

        client = redis_client(self.env.get("LOYALTY_REDIS_URL")
                                      or f"redis://127.0.0.1:{self.env.get('LOYALTY_REDIS_PORT', '6380')}/0",
                                      decode_responses=True)
        wrong = []
        try:
            for key in client.scan_iter(match=f"{self.run_id}:*", count=1000):
                family = family_of(self.run_id, key)
                if family is None:
                    wrong.append(f"{key}: no family")
                elif family.expires and client.ttl(key) == -1:
                    wrong.append(f"{key}: {family.name} without an expiry")
        finally:
            client.close()
        return wrong

    def kill(self) -> None:
        """SIGKILL: no goodbye, no commit, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # ---- HTTP ----------------------------------------------------------------

    def get(self, path: str, admin: bool = True, token: str | None = None) -> tuple[int, Any]:
        """GET with the operator's token (`admin`), a given bearer token, or none (token="")."""
        bearer = token if token is not None else (self.admin_token if admin else "")
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        req = urllib.request.Request(self.base_url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read())

    def pos_headers(self, body: bytes, **extra: str) -> dict[str, str]:
        """Headers of a till request signed with this worker's POS key."""
        return {**signed_headers(self.pos_secret, body, key_id=self.pos_key_id), **extra}

    @property
    def pos_bearer(self) -> str:
        return f"pos:{self.pos_key_id}:{self.pos_secret}"

    def member_token(self, member_id: str, ttl_s: int = 3600) -> str:
        from streams.auth import member_token

        return member_token(self.member_token_secret, member_id, ttl_s)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        req = urllib.request.Request(self.base_url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, _decode(r.read()) if r.status != 204 else None
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read())

    def send_callback(self, event: dict[str, Any] | bytes, secret: str | None = None) -> tuple[int, Any]:
        body = event if isinstance(event, bytes) else orjson.dumps(event)
        return self.post("/v1/callbacks/payment", body, signed_headers(secret or self.callback_secret, body))

    def metrics(self) -> dict[str, int]:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.removeprefix("loyalty_")] = int(float(value))
        return out

    def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until this worker has processed (and committed) everything on every partition it
        consumes: then whatever was sent before has had its effect, or never will. A
        negative check waits for this instead of sleeping a while."""
        since: list[float] = []

        def caught_up() -> bool:
            m = self.metrics()
            lag = {k: v for k, v in m.items() if k.startswith("consumer_lag{")}
            # A batch's ledger rows are sent after its offsets are committed: wait for them too.
            now_ok = bool(lag) and all(v == 0 for v in lag.values()) and not m.get("accrual_sends_in_flight", 0)
            if not now_ok:
                since.clear()
                return False
            since[:] = since or [time.monotonic()]
            # A consumer learns a partition's high-water mark from its fetches (every 0.5 s at
            # most when idle): lag 0 must hold across one to count.
            return time.monotonic() - since[0] >= 0.6
        self.wait_until(caught_up, timeout, "every consumed partition caught up (lag 0, no ledger sends in flight)")

    def wait_until(self, predicate: Any, timeout: float = 120.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except ConnectionError as exc:
                # A poll that met a connection reset (a backing service restarting under
                # the worker) is asked again; a dead worker still fails the wait.
                if self.proc is not None and self.proc.poll() is not None:
                    raise
                log.warning("waiting for %s: %r; asking again", what, exc)
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}; see {self.log_path}")


async def post_signed_many(w: WorkerProcess, reqs: list[tuple[str, dict[str, Any], str]], concurrency: int = 16,
                           partner: bool = False) -> list[tuple[int, Any]]:
    """Signed POSTs (path, body, Idempotency-Key) with `concurrency` in flight: with the
    worker's POS key, or (`partner`) the gateway secret; (status, json) in order."""
    out: list[tuple[int, Any]] = [(0, None)] * len(reqs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(reqs)):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            path, req, key = reqs[i]
            body = orjson.dumps(req)
            headers = signed_headers(w.callback_secret, body) if partner else w.pos_headers(body)
            async with session.post(w.base_url + path, data=body, headers={**headers, "Idempotency-Key": key}) as r:
                out[i] = (r.status, _decode(await r.read()))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return out


async def send_callbacks(
    base_url: str,
    secret: str,
    bodies: list[bytes],
    concurrency: int = 32,
    bad_signature: set[int] | None = None,
    path: str = "/v1/callbacks/payment",
) -> list[tuple[int, dict[str, Any]]]:
    """Sends signed callbacks with `concurrency` in flight; returns (status, json) in order."""
    results: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    bad = bad_signature or set()

    async def sender(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = bodies[i]
            headers = signed_headers("not-the-secret" if i in bad else secret, body)
            for attempt in range(20):
                async with session.post(base_url + path, data=body, headers=headers) as r:
                    payload = await r.read()
                    if r.status == 503 and attempt < 19:  # what a gateway does: retry later
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    results[i] = (r.status, orjson.loads(payload) if payload else {})
                    break

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    return results


async def send_callbacks_in_order(
    base_url: str, secret: str, bodies: list[bytes], key: str = "member_id", concurrency: int = 16,
    path: str = "/v1/callbacks/payment", lane_of: Callable[[dict[str, Any]], str] | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    """Like a gateway: callbacks of one member (by `key`, or the payer's id, or what
    `lane_of` says of the event) one after the other, in list order; different members
    concurrently. Returns (status, json) in order."""
    lanes: dict[str, list[int]] = {}
    for i, body in enumerate(bodies):
        event = orjson.loads(body)
        lane = lane_of(event) if lane_of is not None else event.get(key) or (event.get("payer") or {}).get("id")
        lanes.setdefault(str(lane), []).append(i)
    results: list[tuple[int, dict[str, Any]]] = [(0, {})] * len(bodies)
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for lane in lanes.values():
        queue.put_nowait(lane)

    async def sender(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            for i in queue.get_nowait():
                async with session.post(base_url + path, data=bodies[i],
                                        headers=signed_headers(secret, bodies[i])) as r:
                    payload = await r.read()
                    results[i] = (r.status, orjson.loads(payload) if payload else {})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    return results


async def read_dead_letters(bootstrap: str, topic: str, wait_s: float = 10.0) -> list[dict[str, Any]]:
    """Every record on the dead-letter topic (or another topic of JSON records), decoded;
    an envelope's bodies one by one."""
    from streams.ingress import unpack_records

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(orjson.loads(v) for v in unpack_records([r.value for r in records]))
        return out
    finally:
        await consumer.stop()


def count_by(records: list[dict[str, Any]], key: str) -> Counter[str]:
    return Counter(str(r.get(key)) for r in records)


class WebhookReceiver:
    """A real webhook receiver on 127.0.0.1: records each request, verifies its signature,
    and fails on demand (status to answer, or a delay longer than the notifier's timeout)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.port = free_port()
        self.received: list[tuple[str, dict[str, Any], float]] = []
        self.bad_signatures = 0
        self.fail_status: int | None = None
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(self.secret, request.headers.get("X-Timestamp"), request.headers.get("X-Nonce"),
                   request.headers.get("X-Signature"), body, 300)
        except SignatureError:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status)
        with self.lock:
            self.received.append((request.headers.get("X-Push-Id", ""), orjson.loads(body), time.time()))
        return web.Response(status=204)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/push", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> WebhookReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def pushes_for(self, member: str, kind: str = "coupon_issued") -> list[dict[str, Any]]:
        """The member's pushes of one type (coupons; "" for every type: reminders, exits too)."""
        with self.lock:
            return [b for _, b, _ in self.received
                    if b.get("member_id") == member and (not kind or b.get("type") == kind)]

    def ids(self) -> Counter[str]:
        with self.lock:
            return Counter(pid for pid, _, _ in self.received)
