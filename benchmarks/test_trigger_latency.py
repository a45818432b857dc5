"""Trigger latency: payment callback accepted (202) -> coupon push received by a webhook.

A worker over the real Kafka, Redis and ClickHouse, a real local webhook receiver, and a
steady load of signed payment callbacks (default 1,000/s for 20 s) whose every payment
fires a `spend` trigger. Prints p50 / p90 / p99 / max of the latency and checks that
every push arrived once (a fast wrong answer does not count). Run: `scripts/bench -k
trigger -s`; LOYALTY_BENCH_RATE / LOYALTY_BENCH_SECONDS change the load.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from streams.devtools import WebhookReceiver, WorkerProcess
from streams.signing import signed_headers
from tests.integration.test_marketing import PUSH_SECRET

RULES = """
version = "bench-triggers"
utc_offset_minutes = 480
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "mall"
format = "mall"
[[tiers]]
id = "normal"
multiplier_pct = 100
[[coupon_templates]]
id = "thanks"
kind = "amount_off"
amount_off_fen = 500
valid_days = 7
[[triggers]]
id = "every-payment"
on = "spend"
min_amount_fen = 1
coupon = "thanks"
"""


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


async def _steady(worker: WorkerProcess, rate: int, seconds: int) -> dict[str, float]:
    """Sends `rate` callbacks per second for `seconds`; returns event id -> time of its 202."""
    accepted: dict[str, float] = {}
    members = [f"b-{i:04d}" for i in range(2_000)]
    sem = asyncio.Semaphore(256)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        ev = {"event_id": f"lat-{uuid.uuid4().hex[:16]}", "type": "payment",
              "occurred_at": "2026-11-23T12:00:00+08:00", "member_id": members[n % len(members)],
              "bu_id": "mall", "merchant_id": "s1", "category": "food", "amount_fen": 1_000 + n % 5_000,
              "channel": "wechat"}
        body = orjson.dumps(ev)
        async with sem, session.post(worker.base_url + "/v1/callbacks/payment", data=body,
                                     headers=signed_headers(worker.callback_secret, body)) as resp:
            await resp.read()
            if resp.status == 202:
                accepted[ev["event_id"]] = time.time()

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        start = time.monotonic()
        for n in range(rate * seconds):
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, n)))
        await asyncio.gather(*tasks)
    return accepted


def test_trigger_latency_accepted_to_push_received(tmp_path: Path) -> None:
    import subprocess

    from streams.settings import ROOT
    from tests.integration.conftest import new_worker

    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    rate = int(os.environ.get("LOYALTY_BENCH_RATE", "1000"))
    seconds = int(os.environ.get("LOYALTY_BENCH_SECONDS", "20"))
    rules = tmp_path / "bench.toml"
    rules.write_text(RULES)
    receiver = WebhookReceiver(PUSH_SECRET).start()
    worker = new_worker(tmp_path, "latency", LOYALTY_RULES=str(rules), LOYALTY_PUSH_WEBHOOK_URL=receiver.url,
                        LOYALTY_PUSH_SECRET=PUSH_SECRET, LOYALTY_LEDGER_WITHIN="0.05")
    worker.start()
    try:
        accepted = asyncio.run(_steady(worker, rate, seconds))
        worker.wait_until(lambda: len(receiver.ids()) >= len(accepted), timeout=300, what="every push")
        with receiver.lock:
            arrived = {b["event_id"]: t for _, b, t in receiver.received if b.get("type") == "coupon_issued"}
        ids = receiver.ids()
        assert set(arrived) == set(accepted), "a push is missing or unexpected"
        assert all(n == 1 for n in ids.values()), "a push arrived twice"
        lat = [(arrived[e] - t) * 1000 for e, t in accepted.items()]
        p50, p90, p99, worst = _pct(lat, 0.5), _pct(lat, 0.9), _pct(lat, 0.99), max(lat)
        print(f"\ntrigger latency, {len(accepted)} payments at {rate}/s for {seconds}s, each issuing a coupon: "
              f"p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms")
        m = worker.metrics()
        print(f"pushes delivered {m['pushes_delivered_total']}, duplicates skipped {m['pushes_duplicate_total']}, "
              f"mean processed->delivered {m['push_latency_ms_sum'] / max(1, m['push_latency_ms_count']):.0f} ms")
    finally:
        worker.stop()
        worker.cleanup()
        receiver.stop()


if __name__ == "__main__":
    pytest.main([__file__, "-s"])
