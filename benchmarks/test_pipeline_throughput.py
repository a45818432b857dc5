"""Pipeline throughput, side by side with a naive baseline, on the same data in one run.

N payment events (LOYALTY_BENCH_EVENTS, default 200,000; the issue's figure is 1,000,000)
of the demo's realistic mix (five formats, campaigns, tiers, 10% paid by openid, 5%
refunds, 1% duplicates, a few for a closed store) are preloaded into Kafka. Then:

1. the real worker drains them: events/s from its first applied event until every event
   is accounted for (applied, duplicate, refused, guest, held), every ledger row is in
   ClickHouse and `reconcile` says Redis = ledger;
2. the naive baseline (benchmarks/naive_worker.py: one event at a time, plain Python,
   one Redis round trip each) drains the same topic in its own consumer group.

Prints both rates and the ratio. Run: `scripts/bench -k pipeline -s`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.app import load_rules
from streams.demo import generate_day
from streams.devtools import WorkerProcess, remove_run_data
from streams.settings import ROOT, Settings

PARTITIONS = 4


def make_events(n: int, seed: int = 20261123) -> list[tuple[bytes, bytes]]:
    rules = load_rules(ROOT / "rules" / "demo.toml")
    day = generate_day(seed, n, max(400, n // 50), rules.business_units)
    bodies = day.payments + day.duplicates[: max(1, n // 100)] + day.refunds
    out = []
    for b in bodies:
        ev = orjson.loads(b)
        key = ev.get("member_id") or f"guest:{ev['payer']['kind']}:{ev['payer']['id']}"
        out.append((key.encode(), b))
    return out


async def preload(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    t0 = time.monotonic()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - t0


def wait(predicate, timeout: float, what: str, every: float = 0.25) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def test_pipeline_throughput_vs_naive_baseline(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    settings = Settings.from_env()
    n = int(os.environ.get("LOYALTY_BENCH_EVENTS", "200000"))
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    t = time.monotonic()
    events = make_events(n)
    print(f"\n{len(events):,} messages generated in {time.monotonic() - t:.1f}s", flush=True)
    took = asyncio.run(preload(settings.kafka_bootstrap, f"{run_id}.payments", events))
    print(f"preloaded into Kafka in {took:.1f}s", flush=True)

    worker = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id,
                           extra_env={"LOYALTY_PARTITIONS": str(PARTITIONS), "LOYALTY_BATCH_SIZE": "2000",
                                      "LOYALTY_LEDGER_BATCH_SIZE": "50"})
    worker.start()
    try:
        def done() -> int:
            m = worker.metrics()
            return (m["events_applied_total"] + m["events_duplicate_total"] + m["events_rejected_total"]
                    + m["events_guest_total"] + m["refunds_held_total"])
        t_first = wait(lambda: done() > 0, 120, "the first event")
        first = done()
        wait(lambda: done() >= len(events), 3600, "every event", every=0.5)
        applied = worker.metrics()["events_applied_total"]
        t_end = wait(lambda: worker.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= applied,
                     3600, "the ledger in ClickHouse", every=0.5)
        rate = (len(events) - first) / (t_end - t_first)
        rec = worker.get("/v1/admin/reconcile", admin=True)[1]
        assert rec["clean"] and rec["redis_total"] == rec["ledger_total"], rec
        m = worker.metrics()
        print(f"pipeline: {len(events):,} events in {t_end - t_first:.1f}s = {rate:,.0f} events/s "
              f"(applied {m['events_applied_total']:,}, duplicates {m['events_duplicate_total']:,}, "
              f"refused {m['events_rejected_total']:,}, guests {m['events_guest_total']:,}; Redis = ledger "
              f"{rec['redis_total']:,} points over {rec['members']:,} members)", flush=True)
        print(f"  mean batch {m['batch_size_sum'] / max(1, m['batch_size_count']):,.0f} events, core "
              f"{m['core_ms_sum'] / max(1, m['batch_size_count']):.1f} ms, Redis "
              f"{m['redis_apply_ms_sum'] / max(1, m['batch_size_count']):.1f} ms, batch "
              f"{m['batch_ms_sum'] / max(1, m['batch_ms_count']):.1f} ms, ClickHouse insert "
              f"{m['clickhouse_write_ms_sum'] / max(1, m['clickhouse_write_ms_count']):.0f} ms", flush=True)
    finally:
        worker.stop()

    ns = f"naive-{run_id}"
    env = {**os.environ, "NAIVE_TOPIC": f"{run_id}.payments", "NAIVE_APP": ns, "NAIVE_NS": ns,
           "LOYALTY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "LOYALTY_REDIS_URL": settings.redis_url,
           "LOYALTY_RULES": str(ROOT / "rules" / "demo.toml")}
    r = redis.Redis.from_url(settings.redis_url)
    log = open(tmp_path / "naive.log", "wb")
    naive = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "naive_worker.py")], env=env, cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        def naive_done() -> int:
            return int(r.get(f"{ns}:done") or 0)
        t_first = wait(lambda: naive_done() > 0, 120, "the naive worker's first event")
        first = naive_done()
        t_end = wait(lambda: naive_done() >= len(events), 7200, "the naive worker", every=0.5)
        naive_rate = (len(events) - first) / (t_end - t_first)
    finally:
        naive.terminate()
        naive.wait(30)
        remove_run_data(settings.kafka_bootstrap, settings.redis_url, run_id)
        remove_run_data(settings.kafka_bootstrap, settings.redis_url, ns)
    print(f"naive baseline: {naive_rate:,.0f} events/s (one event at a time, one Redis round trip each)")
    print(f"ratio: pipeline / naive = {rate / naive_rate:.1f}x")


def drain(accrual: list[WorkerProcess], ledger: WorkerProcess, total: int) -> tuple[float, dict[str, Any]]:
    """Seconds from the first applied event until `total` events are accounted for by the
    accrual workers and the ledger worker has every applied row; the reconcile answer."""
    def done() -> int:
        out = 0
        for w in accrual:
            m = w.metrics()
            out += (m["events_applied_total"] + m["events_duplicate_total"] + m["events_rejected_total"]
                    + m["events_guest_total"] + m["refunds_held_total"])
        return out

    t_first = wait(lambda: done() > 0, 120, "the first event")
    first = done()
    wait(lambda: done() >= total, 3600, "every event", every=0.5)
    applied = sum(w.metrics()["events_applied_total"] for w in accrual)
    t_end = wait(lambda: ledger.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= applied,
                 3600, "the ledger in ClickHouse", every=0.5)
    rec = ledger.get("/v1/admin/reconcile", admin=True)[1]
    assert rec["clean"] and rec["redis_total"] == rec["ledger_total"], rec
    return (total - first) / (t_end - t_first), rec


def test_scale_out_two_accrual_workers(tmp_path: Path) -> None:
    """The same events drained by one worker (all roles), then by two accrual workers in
    one consumer group with a third process holding the ledger (embedded ClickHouse
    belongs to one process). Prints both rates and the ratio."""
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    settings = Settings.from_env()
    n = int(os.environ.get("LOYALTY_BENCH_EVENTS", "200000"))
    events = make_events(n)
    env = {"LOYALTY_PARTITIONS": str(PARTITIONS), "LOYALTY_BATCH_SIZE": "2000", "LOYALTY_LEDGER_BATCH_SIZE": "50"}
    rates = {}
    for name, accrual_count in (("one worker, all roles", 0), ("two accrual workers + a ledger worker", 2)):
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(preload(settings.kafka_bootstrap, f"{run_id}.payments", events))
        ledger = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id / "ledger",
                               extra_env={**env, "LOYALTY_ROLES": "ledger" if accrual_count else "all"})
        accrual = [WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id / f"a{i}",
                                 callback_secret=ledger.callback_secret, admin_token=ledger.admin_token,
                                 extra_env={**env, "LOYALTY_ROLES": "accrual,notifier,parking"})
                   for i in range(accrual_count)]
        try:
            for w in [ledger, *accrual]:
                w.start()
            rates[name], rec = drain(accrual or [ledger], ledger, len(events))
            shares = [w.metrics()["events_applied_total"] for w in accrual or [ledger]]
            print(f"\n{name}: {len(events):,} events at {rates[name]:,.0f} events/s; applied per accrual "
                  f"process {shares}; Redis = ledger {rec['redis_total']:,} points", flush=True)
            assert all(s > 0 for s in shares)
        finally:
            for w in [ledger, *accrual]:
                w.stop()
            remove_run_data(settings.kafka_bootstrap, settings.redis_url, run_id)
    one, two = rates.values()
    print(f"scale-out: two accrual workers / one worker = {two / one:.2f}x")
