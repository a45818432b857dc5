"""Latency at a steady load: a callback's 202 -> its balance change visible in Redis.

Signed payment callbacks at LOYALTY_BENCH_RATE per second (default 500; the issue's figure
is 2,000) for LOYALTY_BENCH_SECONDS (20) against one worker; the Lua apply stamps each
event's record with Redis' clock (`applied_at_ms`), the sender notes each 202, and the
difference is the latency. Prints p50 / p99 / max and checks every accepted event was
applied once. Run: `scripts/bench -k apply_latency -s`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import redis

from streams.devtools import WorkerProcess
from streams.settings import ROOT, Settings
from streams.signing import signed_headers
from streams.sinks.balances import BalanceStore, decode_record


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


async def _steady(worker: WorkerProcess, rate: int, seconds: int) -> dict[tuple[str, str], float]:
    accepted: dict[tuple[str, str], float] = {}
    sem = asyncio.Semaphore(512)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        member = f"lat-{n % 5_000:05d}"
        ev = {"event_id": f"al-{uuid.uuid4().hex[:16]}", "type": "payment", "occurred_at": "2026-11-23T12:00:00+08:00",
              "member_id": member, "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion",
              "amount_fen": 1_000 + n % 9_000, "channel": "wechat"}
        body = orjson.dumps(ev)
        async with sem, session.post(worker.base_url + "/v1/callbacks/payment", data=body,
                                     headers=signed_headers(worker.callback_secret, body)) as resp:
            await resp.read()
            if resp.status == 202:
                accepted[(member, ev["event_id"])] = time.time() * 1000

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        tasks = []
        start = time.monotonic()
        for n in range(rate * seconds):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, n)))
        await asyncio.gather(*tasks)
    return accepted


def test_apply_latency_at_a_steady_load(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    rate = int(os.environ.get("LOYALTY_BENCH_RATE", "500"))
    seconds = int(os.environ.get("LOYALTY_BENCH_SECONDS", "20"))
    run_id = f"lat-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id,
                           extra_env={"LOYALTY_BATCH_WITHIN": os.environ.get("LOYALTY_BATCH_WITHIN", "0.01")})
    worker.start()
    try:
        accepted = asyncio.run(_steady(worker, rate, seconds))
        worker.wait_until(lambda: worker.metrics()["events_applied_total"] >= len(accepted), timeout=600,
                          what="every accepted event applied")
        store = BalanceStore(Settings.from_env().redis_url, run_id)
        r = redis.Redis.from_url(Settings.from_env().redis_url, decode_responses=True)
        pipe = r.pipeline(transaction=False)
        keys = list(accepted)
        for member, event_id in keys:
            pipe.hget(store.records_key(member), event_id)
        applied = [decode_record(r).get("applied_at_ms") for r in pipe.execute()]
        assert all(a is not None for a in applied), "an accepted event is missing"
        assert worker.metrics()["events_applied_total"] == len(accepted)
        lat = [int(a) - accepted[k] for k, a in zip(keys, applied, strict=True)]
        print(f"\n202 -> balance in Redis, {len(accepted):,} callbacks at {rate}/s for {seconds}s: "
              f"p50 {_pct(lat, 0.5):.0f} ms, p99 {_pct(lat, 0.99):.0f} ms, max {max(lat):.0f} ms")
    finally:
        worker.stop()
        worker.cleanup()
