"""A worker killed with SIGKILL in the middle of a stream, and restarted: no event
lost, none counted twice, Redis balances equal the ledger and the reference."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devtools.workers import WorkerProcess
from streams.settings import ROOT, Settings
from tests import reference
from tests.integration.reliability import record

pytestmark = pytest.mark.integration
REF = reference.RefRules((ROOT / "rules" / "demo.toml").read_text())


def make_events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    members = [f"crash-m-{i}" for i in range(200)]
    events: list[dict[str, Any]] = []
    paid: list[dict[str, Any]] = []
    for i in range(n):
        if paid and rng.random() < 0.05:
            p = paid.pop(rng.randrange(len(paid)))
            events.append(
                {
                    **p,
                    "event_id": f"{p['event_id']}-rf",
                    "type": "refund",
                    "refund_of": p["event_id"],
                    "amount_fen": rng.randint(1, p["amount_fen"]),
                }
            )
            continue
        ev = {
            "event_id": f"crash-{seed}-{i}",
            "type": "payment",
            "occurred_at": "2026-11-23T12:00:00+08:00",
            "member_id": rng.choice(members),
            "bu_id": rng.choice(["sh-mall", "sh-hotel", "sh-cvs"]),
            "merchant_id": "shop-1",
            "category": rng.choice(["fashion", "food", "room"]),
            "amount_fen": rng.randint(100, 500_000),
            "channel": "alipay",
        }
        events.append(ev)
        paid.append(ev)
    return events


async def produce(topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=Settings.from_env().kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=e["member_id"].encode(), value=orjson.dumps(e)) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(worker_factory: Any) -> None:
    # Small batches so that each wave takes long enough to be interrupted.
    worker: WorkerProcess = worker_factory("crash", LOYALTY_BATCH_SIZE="20")
    worker.start()
    waves = [make_events(2_000, seed) for seed in (1, 2, 3)]
    # Each wave repeats 100 events of the one before: redelivery and replays mixed in.
    for k in (1, 2):
        waves[k] = waves[k - 1][:100] + waves[k]
    kills = 0
    mid_stream = 0
    for wave in waves:
        before = worker.metrics()["events_applied_total"]
        asyncio.run(produce(f"{worker.run_id}.payments", wave))
        worker.wait_until(
            lambda b=before: worker.metrics()["events_applied_total"] > b + 200,
            timeout=60,
            what="the worker to be mid-stream",
        )
        if worker.metrics()["events_applied_total"] < before + len(wave) - 100:
            mid_stream += 1  # killed with part of the wave still to apply
        worker.kill()
        kills += 1
        worker.start()
    assert kills == 3 and mid_stream >= 1

    distinct = {e["event_id"]: e for wave in waves for e in wave}
    expected = reference.simple_points(REF, list(distinct.values()))

    def all_in_ledger() -> bool:
        status, totals = worker.get("/v1/admin/ledger/totals", admin=True)
        return status == 200 and int(totals.get("events", 0)) >= len(distinct)

    worker.wait_until(all_in_ledger, timeout=120, what="every event in the ledger")
    _, totals = worker.get("/v1/admin/ledger/totals", admin=True)
    applied = sum(int(worker.get(f"/v1/members/{m}")[1]["events"]) for m in expected)
    record("worker SIGKILLed 3 times mid-stream", len(distinct), applied, max(0, len(distinct) - applied),
           max(0, applied - len(distinct)), f"{sum(map(len, waves)) - len(distinct)} events delivered again")
    assert totals["events"] == len(distinct)  # none lost, none doubled
    _status, rec = worker.get("/v1/admin/reconcile", admin=True)
    assert rec["clean"], rec["mismatches"]
    assert rec["redis_total"] == sum(expected.values())
    for member, points in expected.items():
        assert worker.get(f"/v1/members/{member}")[1]["balance"] == points, member
