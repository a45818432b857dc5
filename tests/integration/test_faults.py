"""Faults injected into the real services while callbacks flow, each checked by counts:
events accepted (202) = events applied = ledger rows, none doubled, Redis = ledger.

Redis restarted mid-stream (AOF), the Kafka broker restarted, ClickHouse inserts failing
for a while, duplicates and a whole day replayed, poison messages on every topic. Each test
appends its row to .local/artifacts/reliability.jsonl (docs/reliability.md has the table).
The gateway side behaves like a real one: anything but a 2xx is sent again, signed anew.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devtools.workers import WebhookReceiver, WorkerProcess, read_dead_letters
from streams.settings import ROOT, Settings
from streams.signing import signed_headers
from tests import reference
from tests.integration.reliability import record

pytestmark = pytest.mark.integration
REF = reference.RefRules((ROOT / "rules" / "demo.toml").read_text())


def make_events(n: int, tag: str) -> list[dict[str, Any]]:
    members = [f"{tag}-m-{i}" for i in range(60)]
    out = []
    for i in range(n):
        out.append({"event_id": f"{tag}-{i}", "type": "payment", "occurred_at": "2026-11-23T12:00:00+08:00",
                    "member_id": members[i % len(members)], "bu_id": ("sh-mall", "sh-hotel", "sh-cvs")[i % 3],
                    "merchant_id": "shop-1", "category": ("fashion", "food", "room")[i % 3],
                    "amount_fen": 1_000 + (i * 7919) % 200_000, "channel": "alipay"})
    return out


class Gateway:
    """Sends every event until it is acknowledged (202), like a payment gateway; counts tries.

    Each member's events go through one lane, in order: a callback being retried holds back
    the member's next one. (With any lane taking any event, a member's later payment could
    be acknowledged while an earlier one was still being retried: the engine would apply
    them in that order, and a tier crossed on another payment earns other points than the
    reference, which takes them in the order sent.)"""

    def __init__(self, w: WorkerProcess) -> None:
        self.w = w
        self.accepted = 0
        self.retries = 0

    async def send_all(self, events: list[dict[str, Any]], concurrency: int = 16, give_up_s: float = 180) -> None:
        queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in range(concurrency)]
        for e in events:
            queues[zlib.crc32(str(e.get("member_id")).encode()) % concurrency].put_nowait(e)
        deadline = time.monotonic() + give_up_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async def lane(queue: asyncio.Queue[dict[str, Any]]) -> None:
                while not queue.empty():
                    ev = queue.get_nowait()
                    body = orjson.dumps(ev)
                    while True:
                        assert time.monotonic() < deadline, f"{ev['event_id']} never acknowledged"
                        try:
                            async with session.post(self.w.base_url + "/v1/callbacks/payment", data=body,
                                                    headers=signed_headers(self.w.callback_secret, body)) as r:
                                await r.read()
                                if r.status == 202:
                                    self.accepted += 1
                                    break
                                assert r.status in (429, 500, 502, 503), f"{r.status} for {ev['event_id']}"
                        except (aiohttp.ClientError, TimeoutError):
                            pass
                        self.retries += 1
                        await asyncio.sleep(0.2)
            await asyncio.gather(*(lane(q) for q in queues))


def during(gateway: Gateway, after_accepted: int, fault: Any) -> threading.Thread:
    """Runs `fault()` in a thread once the gateway has `after_accepted` acknowledgements."""
    def run() -> None:
        while gateway.accepted < after_accepted:
            time.sleep(0.05)
        fault()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def services(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), *args], check=True, timeout=400)


def member_view(w: WorkerProcess, member: str) -> dict[str, Any]:
    """A member's view; a 503 (a backing service just restarted: a pooled connection found
    dead) is asked again, as a client would, for up to 30 s; anything else is the answer."""
    deadline = time.monotonic() + 30
    while True:
        status, body = w.get(f"/v1/members/{member}")
        if status != 503 or time.monotonic() > deadline:
            assert status == 200, f"{member}: {status} {body}"
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)


def check_exactly_once(w: WorkerProcess, events: list[dict[str, Any]], fault: str, note: str = "") -> None:
    distinct = {e["event_id"]: e for e in events}
    expected = reference.simple_points(REF, list(distinct.values()))
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals")[1].get("events", 0) >= len(distinct), 180,
                 "every event in the ledger")
    w.wait_caught_up()  # everything delivered is processed: anything doubled has landed
    events_in_ledger = int(w.get("/v1/admin/ledger/totals")[1]["events"])
    applied = sum(int(member_view(w, m)["events"]) for m in expected)
    rec = w.get("/v1/admin/reconcile")[1]
    lost, doubled = max(0, len(distinct) - applied), max(0, applied - len(distinct))
    record(fault, len(distinct), applied, lost, doubled, note)
    assert applied == len(distinct) == events_in_ledger
    assert rec["clean"], rec.get("mismatches")
    balances = {m: int(member_view(w, m)["balance"]) for m in expected}
    differ = {m: (balances[m], points) for m, points in expected.items() if balances[m] != points}
    if differ:
        first = next(iter(differ))
        rows = w.get(f"/v1/members/{first}/ledger?limit=1000")[1].get("rows", [])
        ref = reference.simple_points(REF, [e for e in distinct.values() if e["member_id"] == first])
        pytest.fail(f"balance, expected: {differ}; {first} alone in the reference: {ref}; its ledger: "
                    + "; ".join(f"{r.get('event_id')} {r.get('kind')} {r.get('points')} {r.get('explain')}"
                                for r in rows))
    assert rec["redis_total"] == sum(expected.values())


@pytest.mark.parametrize(("service", "down_s", "fault", "env"), [
    ("redis", 3, "Redis restarted mid-stream (AOF everysec)", {}),
    ("kafka", 2, "Kafka broker restarted mid-stream", {"LOYALTY_PUBLISH_TIMEOUT": "2"}),
])
def test_backing_service_restarted_mid_stream(worker_factory: Any, service: str, down_s: int, fault: str,
                                              env: dict[str, str]) -> None:
    w: WorkerProcess = worker_factory(f"{service}-restart", LOYALTY_BATCH_SIZE="50", **env)
    w.start()
    w.wait_caught_up()  # started: its partitions assigned (a restart mid-stream, not mid-start)
    events = make_events(1_500, f"{service[0]}r-{uuid.uuid4().hex[:6]}")
    gw = Gateway(w)

    def restart() -> None:
        services("down", service)
        time.sleep(down_s)
        services("up", service)

    t = during(gw, 400, restart)
    asyncio.run(gw.send_all(events, give_up_s=400))
    t.join(400)
    assert gw.retries > 0, "the restart should have refused some callbacks"
    check_exactly_once(w, events, fault, f"{gw.retries} gateway retries")


def kill_redis() -> None:
    """SIGKILL, no goodbye: Redis stops where it is (its AOF as the page cache had it)."""
    pid = int((ROOT / ".local" / "run" / "redis.pid").read_text())
    subprocess.run(["kill", "-9", str(pid)], check=True)
    for _ in range(100):
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)


def test_redis_sigkilled_three_times_mid_stream(worker_factory: Any) -> None:
    """Redis killed with SIGKILL at three points of a stream of payments and started again
    each time (from its AOF): the ingress refuses while it is down (the gateway sends again),
    the accrual retries, `loyalty reconcile --repair` finds nothing to repair or repairs it,
    and every event counts once."""
    w: WorkerProcess = worker_factory("redis-kill", LOYALTY_BATCH_SIZE="50")
    w.start()
    w.wait_caught_up()
    events = make_events(1_500, f"rk-{uuid.uuid4().hex[:6]}")
    gw = Gateway(w)

    def kills() -> None:
        for at in (300, 700, 1_100):
            while gw.accepted < at:
                time.sleep(0.05)
            kill_redis()
            time.sleep(1)
            services("up", "redis")

    t = threading.Thread(target=kills, daemon=True)
    t.start()
    asyncio.run(gw.send_all(events, give_up_s=400))
    t.join(400)
    assert gw.retries > 0, "the kills should have refused some callbacks"
    w.wait_until(lambda: w.get("/healthz")[0] == 200, 60, "the worker back on Redis")
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals")[1].get("events", 0) >= len({e["event_id"] for e in events}),
                 180, "every event in the ledger")
    w.wait_caught_up()
    out = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--repair"], env=w.env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    check_exactly_once(w, events, "Redis SIGKILLed 3 times mid-stream (AOF everysec), restarted; reconcile --repair",
                       f"{gw.retries} gateway retries; " + out.stdout.splitlines()[0][:120])


def test_redis_losing_its_last_writes_is_repaired_from_the_ledger(worker_factory: Any) -> None:
    """A machine that crashes loses what Redis had not yet fsynced (`appendfsync everysec`:
    up to a second): Redis is killed (SIGKILL) and its AOF cut short by the tail of the
    traffic's writes, then started again. Reconcile finds the members whose Redis state is
    behind the ledger, `loyalty reconcile --repair` rebuilds them from it, and the day goes
    on: every event counted once, none lost."""
    w: WorkerProcess = worker_factory("redis-loss", LOYALTY_BATCH_SIZE="50")
    w.start()
    w.wait_caught_up()
    tag = f"rl-{uuid.uuid4().hex[:6]}"
    events = make_events(1_200, tag)
    asyncio.run(Gateway(w).send_all(events[:900]))
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals")[1].get("events", 0) >= 900, 180, "the ledger has all")
    w.wait_caught_up()
    aof = sorted((ROOT / ".local" / "data" / "redis" / "appendonlydir").glob("*.incr.aof"))[-1]
    kill_redis()
    size = aof.stat().st_size
    with aof.open("r+b") as f:  # what the disk had not got when the machine went down
        f.truncate(size - min(size // 2, 300_000))
    services("up", "redis")
    w.wait_until(lambda: w.get("/healthz")[0] == 200, 60, "the worker back on Redis")
    # The worker holding the ledger sees the new Redis process and repairs it by itself
    # (the accrual applies nothing on it meanwhile).
    w.wait_until(lambda: w.metrics().get("redis_restart_repairs_total", 0) >= 1, 120, "the worker's own repair")
    rebuilt = int(w.metrics()["redis_restart_members_rebuilt_total"])
    assert rebuilt > 0, "the cut should have lost some members' last writes"
    assert w.get("/v1/admin/reconcile", admin=True)[1]["mismatch_count"] == 0
    out = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--repair"], env=w.env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 members behind the ledger rebuilt" in out.stdout and "mismatches 0" in out.stdout, out.stdout
    asyncio.run(Gateway(w).send_all(events[900:]))  # the day goes on
    check_exactly_once(w, events, "Redis lost its last writes (SIGKILL, AOF cut short), repaired from the ledger",
                       f"{rebuilt} members behind the ledger rebuilt by the worker before it applied again")


def test_clickhouse_sink_failing_for_a_while(worker_factory: Any, tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    w: WorkerProcess = worker_factory("ch-down", LOYALTY_BATCH_SIZE="50", LOYALTY_FAULTS_DIR=str(faults))
    w.start()
    events = make_events(1_500, f"cd-{uuid.uuid4().hex[:6]}")
    gw = Gateway(w)
    seen: dict[str, int] = {}

    def outage() -> None:
        (faults / "clickhouse-down").touch()
        time.sleep(1.0)
        seen["ledger_at_start"] = int(w.get("/v1/admin/ledger/totals")[1].get("events", 0))
        seen["applied_at_start"] = w.metrics()["events_applied_total"]
        time.sleep(8)
        seen["ledger_at_end"] = int(w.get("/v1/admin/ledger/totals")[1].get("events", 0))
        seen["applied_at_end"] = w.metrics()["events_applied_total"]
        seen["retries"] = w.metrics()["ledger_write_retries_total"]
        (faults / "clickhouse-down").unlink()

    t = during(gw, 300, outage)
    asyncio.run(gw.send_all(events))
    t.join(60)
    # While ClickHouse was down, balances went on in Redis and the ledger did not move.
    assert seen["applied_at_end"] > seen["applied_at_start"]
    assert seen["ledger_at_end"] == seen["ledger_at_start"]
    assert seen["retries"] >= 2  # the sink retried with backoff
    check_exactly_once(w, events, "ClickHouse inserts failing for 8 s",
                       f"{seen['retries']} insert retries, {seen['applied_at_end'] - seen['applied_at_start']} "
                       "events applied meanwhile")


async def produce(topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=Settings.from_env().kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


def test_duplicates_and_a_whole_day_replayed_change_nothing_twice(worker_factory: Any) -> None:
    w: WorkerProcess = worker_factory("replay")
    w.start()
    tag = f"rp-{uuid.uuid4().hex[:6]}"
    events = make_events(600, tag)
    gw = Gateway(w)
    asyncio.run(gw.send_all(events))
    asyncio.run(gw.send_all(events[:50] * 9))  # the same callback ten times
    refund = {**events[0], "event_id": f"{tag}-0-rf", "type": "refund", "refund_of": f"{tag}-late",
              "amount_fen": 500}
    late = {**events[0], "event_id": f"{tag}-late"}
    asyncio.run(gw.send_all([refund]))  # a refund before its payment...
    asyncio.run(gw.send_all([late]))  # ...which arrives afterwards
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals")[1].get("events", 0) >= len(events) + 2, 120,
                 "the day in the ledger")
    # The whole day again, straight into Kafka (a replay of the topic from a backup).
    day = [(e["member_id"].encode(), orjson.dumps(e)) for e in [*events, late, refund]]
    asyncio.run(produce(f"{w.run_id}.payments", day))
    w.wait_until(lambda: w.metrics()["events_duplicate_total"] >= len(day), 120, "the replay to be seen")
    expected_events = [*events, late, refund]
    distinct = {e["event_id"] for e in expected_events}
    applied = sum(int(w.get(f"/v1/members/{m}")[1]["events"]) for m in {e["member_id"] for e in events})
    record("duplicates x10, refund before payment, the day replayed", len(distinct), applied,
           max(0, len(distinct) - applied), max(0, applied - len(distinct)),
           f"{len(events[:50]) * 9 + len(day)} repeated deliveries")
    assert applied == len(distinct)
    assert w.get("/v1/admin/ledger/totals")[1]["events"] == len(distinct)
    assert w.get("/v1/admin/reconcile")[1]["clean"]


def test_poison_messages_on_every_topic_are_dead_lettered_and_the_stream_goes_on(worker_factory: Any) -> None:
    receiver = WebhookReceiver("push-secret").start()  # so the notifier runs and reads its topic
    w: WorkerProcess = worker_factory("poison", LOYALTY_PUSH_WEBHOOK_URL=receiver.url,
                                      LOYALTY_PUSH_SECRET="push-secret")
    w.start()
    poison = [b"\xff\xfe not json", b"[1,2,3]", b'{"event_id": 5}', b"{" * 5_000, b'{"type":"payment"}',
              b'{"ledger": [{"member_id": "m"}]}',
              b'{"event_id": "poison-ev-1", "type": "payment", "occurred_at": "2026-11-23T10:00:00+08:00", '
              b'"member_id": "m-poison", "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", '
              b'"category": "fashion", "amount_fen": 1180591620717411303424, "channel": "wechat"}']
    topics = ("payments", "member-events", "parking", "ledger", "coupon-pushes")
    for topic in topics:
        asyncio.run(produce(f"{w.run_id}.{topic}", [(b"k", p) for p in poison]))
    m = f"after-poison-{uuid.uuid4().hex[:6]}"
    gw = Gateway(w)
    good = make_events(20, m)
    asyncio.run(gw.send_all(good))
    w.wait_until(lambda: sum(int(w.get(f"/v1/members/{e['member_id']}")[1].get("events", 0))
                             for e in {e["member_id"]: e for e in good}.values()) == len(good), 60,
                 "the good events after the poison")
    settings = Settings.from_env()

    def letters() -> list[dict[str, Any]]:
        return asyncio.run(read_dead_letters(settings.kafka_bootstrap, f"{w.run_id}.dead-letter", wait_s=2))

    w.wait_until(lambda: len(letters()) >= len(poison) * len(topics), 60, "a dead letter per poison message")
    sources = {d["source"] for d in letters()}
    assert {"accrual", "parking", "ledger", "notifier"} <= sources, sources
    assert all(d["reason"] for d in letters())
    # A dead letter carries the event id whenever the body has a readable one.
    named = [d for d in letters() if "poison-ev-1" in (d.get("body") or "")]
    assert len(named) == len(topics) and all(d["event_id"] == "poison-ev-1" for d in named), named
    accrual = next(d for d in named if d["source"] == "accrual")
    assert accrual["reason"] == "amount_fen: is out of range: at most 1000000000000 fen", accrual
    # The same through the HTTP ingress: 400 with the reason, dead-lettered with the id.
    huge = json.dumps({**good[0], "event_id": "poison-ev-2", "amount_fen": 2**70}).encode()
    status, answer = w.send_callback(huge)
    assert status == 400 and answer["field"] == "amount_fen" and "out of range" in answer["error"], answer
    w.wait_until(lambda: any(d["event_id"] == "poison-ev-2" and d["source"] == "ingress" for d in letters()), 30,
                 "the ingress's dead letter with its event id")
    receiver.stop()
    record("poison messages on 5 topics", len(good), len(good), 0, 0,
           f"{len(poison) * len(topics)} poison messages, {len(letters())} dead letters")
