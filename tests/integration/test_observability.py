"""Overload and metrics over the real services: an ingress past its in-flight limit refuses
at once with 503 + Retry-After and loses nothing it accepted; /metrics has the histograms,
per-topic counters and consumer lag in Prometheus format."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.workers import WorkerProcess
from streams.signing import signed_headers

pytestmark = pytest.mark.integration


def payment(member: str, amount: int = 10_000) -> dict[str, Any]:
    return {"event_id": f"ov-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": "2026-11-23T10:15:00+08:00",
            "member_id": member, "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion",
            "amount_fen": amount, "channel": "wechat"}


async def burst(w: WorkerProcess, events: list[dict[str, Any]]) -> list[tuple[int, float, str | None]]:
    """All at once: (status, seconds to the answer, Retry-After) per callback."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(ev: dict[str, Any]) -> tuple[int, float, str | None]:
            body = orjson.dumps(ev)
            t0 = time.monotonic()
            async with session.post(w.base_url + "/v1/callbacks/payment", data=body,
                                    headers=signed_headers(w.callback_secret, body)) as r:
                await r.read()
                return r.status, time.monotonic() - t0, r.headers.get("Retry-After")
        return await asyncio.gather(*(one(e) for e in events))


def test_overload_is_refused_quickly_and_nothing_accepted_is_lost(worker_factory: Any) -> None:
    w: WorkerProcess = worker_factory("overload", LOYALTY_MAX_IN_FLIGHT="2")
    w.start()
    members = [f"o-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    events = [payment(members[i % len(members)]) for i in range(300)]
    answers = asyncio.run(burst(w, events))
    statuses = [s for s, _, _ in answers]
    assert set(statuses) <= {202, 503}
    shed = [(t, ra) for s, t, ra in answers if s == 503]
    assert shed, "the burst should exceed an in-flight limit of 2"
    assert all(ra == "1" for _, ra in shed) and max(t for t, _ in shed) < 5.0
    accepted = [e for e, s in zip(events, statuses, strict=True) if s == 202]
    refused = [e for e, s in zip(events, statuses, strict=True) if s == 503]
    # The gateway retries what was refused, a few at a time.
    shed_again = 0
    for e in refused:
        for _ in range(50):
            if w.send_callback(e)[0] == 202:
                break
            shed_again += 1
            time.sleep(0.05)
        else:
            raise AssertionError(f"{e['event_id']} never accepted")
    w.wait_until(lambda: w.metrics()["events_applied_total"] == len(events), timeout=90,
                 what="every accepted event applied exactly once")
    w.wait_caught_up()
    m = w.metrics()
    # Every 503 was counted, and a shed callback never reached Kafka: no duplicate to see.
    assert m["callbacks_shed_total"] == len(shed) + shed_again and m["events_duplicate_total"] == 0, m
    total = sum(w.get(f"/v1/members/{x}")[1]["events"] for x in members)
    assert total == len(accepted) + len(refused) == len(events)


def test_metrics_in_prometheus_format(worker_factory: Any) -> None:
    w: WorkerProcess = worker_factory("metrics")
    w.start()
    m = f"mx-{uuid.uuid4().hex[:8]}"
    for _ in range(5):
        assert w.send_callback(payment(m))[0] == 202
    w.wait_until(lambda: w.metrics()["events_applied_total"] == 5, timeout=60, what="the payments")
    w.wait_until(lambda: w.metrics().get("clickhouse_write_ms_count", 0) > 0, timeout=60, what="a ledger write")
    with __import__("urllib.request").request.urlopen(w.base_url + "/metrics") as r:
        text = r.read().decode()
    for name in ("batch_size", "core_ms", "redis_apply_ms", "clickhouse_write_ms", "batch_ms", "callback_ms"):
        assert f"# TYPE loyalty_{name} histogram" in text, name
        assert f'loyalty_{name}_bucket{{le="+Inf"}}' in text, name
    got = w.metrics()
    assert got["callback_ms_count"] >= 5 and got["batch_size_sum"] >= 5
    assert got[f'topic_messages_total{{direction="in",topic="{w.run_id}.payments"}}'] >= 5
    assert got[f'topic_messages_total{{direction="out",topic="{w.run_id}.payments"}}'] == 5
    lag = {k for k in got if k.startswith("consumer_lag{") and ".payments" in k}
    assert lag == {f'consumer_lag{{partition="{p}",topic="{w.run_id}.payments"}}' for p in range(4)}, lag
    w.wait_until(lambda: all(v == 0 for k, v in w.metrics().items() if k.startswith("consumer_lag{")
                             and ".payments" in k), timeout=30, what="no lag once everything is processed")


def test_several_ingress_processes_share_one_port_and_metrics_sum_them(worker_factory: Any, tmp_path: Any) -> None:
    shared = tmp_path / "metrics"
    w = worker_factory("multi", LOYALTY_ROLES="ingress", LOYALTY_METRICS_DIR=str(shared))
    w.args = ["--processes", "2"]
    w.start()
    w.wait_until(lambda: w.metrics().get("metrics_processes") == 2, 60, "both processes' metrics")
    n = 40
    for i in range(n):  # each on a new connection: the kernel spreads them over the two
        assert w.send_callback(payment(f"mp-{i}"))[0] == 202
    w.wait_until(lambda: w.metrics()["callbacks_accepted_total"] == n, 30, "the sum over both processes")
    per_process = [orjson.loads(p.read_bytes())["counters"].get("callbacks_accepted_total", 0)
                   for p in sorted(shared.glob("*.json"))]
    assert len(per_process) == 2 and sum(per_process) == n, per_process
    assert all(k > 0 for k in per_process), f"one process took every connection: {per_process}"
    histogram = w.metrics()
    assert histogram['callback_ms_count'] == n, "histograms are summed too"
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0
