"""Soak: a steady load for LOYALTY_SOAK_SECONDS (default 600) at LOYALTY_BENCH_RATE (200/s)
against one worker; the worker's RSS is sampled every 30 s (psutil). Prints RSS at start,
end and max, and checks every accepted callback was applied. Run: `scripts/bench -k soak -s`.
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
import psutil

from devtools.workers import WorkerProcess
from streams.settings import ROOT
from streams.signing import signed_headers


async def _load(worker: WorkerProcess, rate: int, seconds: int, samples: list[tuple[float, int]]) -> int:
    proc = psutil.Process(worker.proc.pid)  # type: ignore[union-attr]
    accepted = 0
    sem = asyncio.Semaphore(256)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal accepted
        ev = {"event_id": f"soak-{uuid.uuid4().hex[:16]}", "type": "payment",
              "occurred_at": "2026-11-23T12:00:00+08:00", "member_id": f"soak-{n % 20_000:05d}", "bu_id": "sh-mall",
              "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 1_000 + n % 9_000,
              "channel": "wechat"}
        body = orjson.dumps(ev)
        async with sem, session.post(worker.base_url + "/v1/callbacks/payment", data=body,
                                     headers=signed_headers(worker.callback_secret, body)) as resp:
            await resp.read()
            accepted += resp.status == 202

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        start = time.monotonic()
        next_sample = start
        pending: set[asyncio.Task[None]] = set()
        for n in range(rate * seconds):
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - start, proc.memory_info().rss))
                next_sample += 30
            delay = start + n / rate - now
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one(session, n))
            pending.add(t)
            t.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        samples.append((time.monotonic() - start, proc.memory_info().rss))
    return accepted


def test_soak_memory_stays_flat(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    rate = int(os.environ.get("LOYALTY_BENCH_RATE", "200"))
    seconds = int(os.environ.get("LOYALTY_SOAK_SECONDS", "600"))
    run_id = f"soak-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id)
    worker.start()
    try:
        samples: list[tuple[float, int]] = []
        accepted = asyncio.run(_load(worker, rate, seconds, samples))
        worker.wait_until(lambda: worker.metrics()["events_applied_total"] >= accepted, timeout=600,
                          what="every accepted callback applied")
        assert worker.metrics()["events_applied_total"] == accepted
        mib = [rss / 2**20 for _, rss in samples]
        print(f"\nsoak: {accepted:,} callbacks at {rate}/s for {seconds}s; worker RSS start {mib[0]:.0f} MiB, "
              f"end {mib[-1]:.0f} MiB, max {max(mib):.0f} MiB; samples " + ", ".join(
                  f"{t:.0f}s {m:.0f}" for (t, _), m in zip(samples, mib, strict=True)))
    finally:
        worker.stop()
        worker.cleanup()
