"""Pipeline throughput, side by side with a naive baseline and Faust's own ceiling, on the
same data in one run.

N payment events (LOYALTY_BENCH_EVENTS, default 200,000; the issue's figure is 1,000,000)
of the demo's realistic mix (five formats, campaigns, tiers, leaderboards, 10% paid by
openid, 5% refunds, 1% duplicates, a few for a closed store) are preloaded into Kafka the
way the ingress writes them at a peak: envelopes of their partition's events, no larger on
average than the ingress produced in its capacity run (`ingress_envelope_mean` in
benchmarks/results/latest.json; LOYALTY_BENCH_ENVELOPE overrides). Then:

1. the real worker (every role) drains them: events/s from its first applied event until
   every event is accounted for (applied, duplicate, refused, guest, held), every ledger
   row is in ClickHouse and `reconcile` says Redis = ledger; Redis bytes per event = the
   growth of Redis' used_memory over the run / events consumed;
2. a no-op Faust agent (benchmarks/noop_worker.py) drains the same envelopes: the ceiling
   Faust itself sets;
3. the naive baseline (benchmarks/naive_worker.py: one event per record, plain Python, one
   Redis round trip each) drains the same events as single records.

Run: `scripts/bench pipeline --events N`.
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
import psutil
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import core_ext
from benchmarks.cpu import CpuAccount
from benchmarks.results import LATEST, record
from devtools import recovery_check
from devtools.demo import generate_day
from devtools.workers import WorkerProcess, remove_run_data
from streams.app import load_rules
from streams.ingress import partition_for
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


def envelopes(events: list[tuple[bytes, bytes]], size: int,
              partitions: int = PARTITIONS) -> list[tuple[bytes, int, bytes]]:
    """The events packed per partition of their key, in order, `size` to an envelope."""
    lanes: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, body in events:
        lanes.setdefault(partition_for(key, partitions), []).append((key, body))
    out = []
    for p, items in sorted(lanes.items()):
        for i in range(0, len(items), size):
            chunk = items[i:i + size]
            value = chunk[0][1] if len(chunk) == 1 else core_ext.envelope_pack([b for _k, b in chunk])
            out.append((chunk[0][0], p, value))
    return out


async def create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


async def preload(bootstrap: str, topic: str, records: list[tuple[bytes, int | None, bytes]]) -> float:
    await create(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    t0 = time.monotonic()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=p) for k, p, v in records]
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


def envelope_size() -> tuple[int, str]:
    """The envelope size to preload: what the ingress produced at its peak, or the override."""
    if os.environ.get("LOYALTY_BENCH_ENVELOPE"):
        return int(os.environ["LOYALTY_BENCH_ENVELOPE"]), "LOYALTY_BENCH_ENVELOPE"
    if LATEST.exists():
        mean = orjson.loads(LATEST.read_bytes()).get("ingress_envelope_mean")
        if mean:
            return max(1, int(mean)), f"the ingress capacity run's mean ({mean:.1f})"
    return 50, "default (no ingress capacity run recorded yet)"


def _side_worker(script: str, env_prefix: str, topic: str, run_id: str, log_path: Path) -> subprocess.Popen[bytes]:
    settings = Settings.from_env()
    ns = f"{env_prefix.lower()}-{run_id}"
    env = {**os.environ, f"{env_prefix}_TOPIC": topic, f"{env_prefix}_APP": ns, f"{env_prefix}_NS": ns,
           "LOYALTY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "LOYALTY_REDIS_URL": settings.redis_url,
           "LOYALTY_RULES": str(ROOT / "rules" / "demo.toml")}
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / script)], env=env, cwd=ROOT,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def _side_rate(proc: subprocess.Popen[bytes], counter: str, total: int) -> float:
    r = redis.Redis.from_url(Settings.from_env().redis_url)
    try:
        def done() -> int:
            return int(r.get(counter) or 0)
        t_first = wait(lambda: done() > 0, 120, counter)
        first = done()
        t_end = wait(lambda: done() >= total, 7200, counter, every=0.25)
        return (total - first) / (t_end - t_first)
    finally:
        proc.terminate()
        proc.wait(30)


def test_pipeline_throughput_vs_naive_baseline(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    settings = Settings.from_env()
    n = int(os.environ.get("LOYALTY_BENCH_EVENTS", "200000"))
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        t = time.monotonic()
        events = make_events(n)
        size, source = envelope_size()
        packed = envelopes(events, size)
        mean = len(events) / len(packed)
        print(f"\n{len(events):,} events generated in {time.monotonic() - t:.1f}s; {len(packed):,} envelopes, "
              f"mean {mean:.1f} events (size {size}: {source})", flush=True)
        r = redis.Redis.from_url(settings.redis_url)
        took = asyncio.run(preload(settings.kafka_bootstrap, f"{run_id}.payments", list(packed)))
        naive_topic = f"{run_id}.naive"
        asyncio.run(preload(settings.kafka_bootstrap, naive_topic, [(k, None, v) for k, v in events]))
        print(f"preloaded into Kafka in {took:.1f}s (and as single records for the naive agent)", flush=True)

        used_before = int(r.info("memory")["used_memory"])
        worker = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id,
                               extra_env={"LOYALTY_PARTITIONS": str(PARTITIONS), "LOYALTY_BATCH_SIZE": "200",
                                          "LOYALTY_LEDGER_BATCH_SIZE": "50"})
        worker.start()
        try:
            def done() -> int:
                m = worker.metrics()
                return accounted(m)
            t_first = wait(lambda: done() > 0, 120, "the first event")
            first = done()
            assert worker.proc is not None
            cpu = CpuAccount(worker.proc.pid)
            cpu.start()
            # /metrics is rendered by the worker under test: polled once a second, not more, so
            # that the harness does not take the worker's CPU (each render is ~15 ms).
            wait(lambda: done() >= len(events), 3600, "every event", every=1.0)
            applied = worker.metrics()["events_applied_total"]
            t_end = wait(lambda: worker.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= applied,
                         3600, "the ledger in ClickHouse", every=0.25)
            cpu.stop()
            rate = (len(events) - first) / (t_end - t_first)
            rec = worker.get("/v1/admin/reconcile", admin=True)[1]
            assert rec["clean"] and rec["redis_total"] == rec["ledger_total"], rec
            # The wallet-check timer may be sending its scheduled events right now (counted
            # once the round is sent, decoded as they arrive): read the counts once they rest.
            m = settled_metrics(worker)
            assert m["events_total"] - resent(m) == len(events), "every event decoded once"
            used_after = int(r.info("memory")["used_memory"])
            per_event = (used_after - used_before) / len(events)
            batches = max(1, m["batch_size_count"])
            print(f"pipeline: {len(events):,} events in {t_end - t_first:.1f}s = {rate:,.0f} events/s "
                  f"(applied {m['events_applied_total']:,}, duplicates {m['events_duplicate_total']:,}, "
                  f"refused {m['events_rejected_total']:,}, guests {m['events_guest_total']:,}; Redis = ledger "
                  f"{rec['redis_total']:,} points over {rec['members']:,} members)", flush=True)
            print(f"  mean batch {m['batch_size_sum'] / batches:,.0f} events, "
                  f"core {m['core_ms_sum'] / batches:.1f} ms, "
                  f"Redis {m['redis_apply_ms_sum'] / batches:.1f} ms, batch {m['batch_ms_sum'] / batches:.1f} ms, "
                  f"ClickHouse insert {m['clickhouse_write_ms_sum'] / max(1, m['clickhouse_write_ms_count']):.0f} ms, "
                  f"ledger sink {m['ledger_sink_cpu_us_total'] / max(1, m['ledger_sink_rows_total']):.2f} µs CPU "
                  f"per row ({m['ledger_sink_rows_total']:,} rows)", flush=True)
            phases = ", ".join(f"{k} {m.get(f'accrual_phase_{k}_us_total', 0) / len(events):.1f}"
                               for k in ("decode", "read", "evaluate", "reserve", "outbox", "write", "settle", "guests",
                                         "send", "trim", "after"))
            print(f"  accrual phases, wall µs per event: {phases}", flush=True)
            us = cpu.per_event(len(events) - first)
            print(f"  CPU µs per event: worker {us['worker']:.1f}, Redis {us['redis']:.1f}, Kafka {us['kafka']:.1f}, "
                  f"rest of the machine {us['other']:.1f}; the machine {us['machine']:.1f} "
                  f"({cpu.machine_busy:.0%} of its {psutil.cpu_count()} cores busy): at most "
                  f"{psutil.cpu_count() * 1e6 / us['machine']:,.0f} events/s on this machine at this CPU per event",
                  flush=True)
            print(f"Redis: {used_after - used_before:,} bytes more for {len(events):,} events = {per_event:,.0f} "
                  "bytes per event (members' hashes, records, history, guests, boards)", flush=True)
            rebuilt = lose_redis_and_rebuild(worker)
        finally:
            worker.stop()

        noop = _side_worker("noop_worker.py", "NOOP", f"{run_id}.payments", run_id, tmp_path / "noop.log")
        noop_rate = _side_rate(noop, f"noop-{run_id}:events", len(events))
        print(f"no-op Faust agent on the same envelopes: {noop_rate:,.0f} events/s "
              f"({noop_rate / mean:,.0f} records/s)", flush=True)
        naive = _side_worker("naive_worker.py", "NAIVE", naive_topic, run_id, tmp_path / "naive.log")
        naive_rate = _side_rate(naive, f"naive-{run_id}:done", len(events))
        print(f"naive baseline: {naive_rate:,.0f} events/s (one event per record, one Redis round trip each)")
        print(f"ratio: pipeline / naive = {rate / naive_rate:.1f}x; pipeline / no-op Faust = {rate / noop_rate:.2f}")
        record(pipeline_eps=round(rate), naive_eps=round(naive_rate), pipeline_ratio=round(rate / naive_rate, 1),
               noop_faust_eps=round(noop_rate), redis_bytes_per_event=round(per_event), events=len(events),
               pipeline_envelope_mean=round(mean, 1),
               pipeline_cpu_us_per_event={k: round(v, 1) for k, v in us.items()},
               pipeline_machine_busy=round(cpu.machine_busy, 2), **rebuilt)
    finally:
        # Also after a failure: a run's keys left in Redis would be rewritten by every later
        # AOF rewrite and so tax the next runs.
        for prefix in (run_id, f"noop-{run_id}", f"naive-{run_id}"):
            remove_run_data(settings.kafka_bootstrap, settings.redis_url, prefix)


def lose_redis_and_rebuild(worker: WorkerProcess) -> dict[str, Any]:
    """After the drain: the run's Redis namespace captured and wiped (the worker stopped
    meanwhile), `loyalty rebuild` timed, and every member compared kind by kind (a fast
    wrong rebuild fails here)."""
    lost = recovery_check.lose_and_rebuild(worker)
    assert lost.rebuild.returncode == 0, lost.rebuild.stdout + lost.rebuild.stderr
    differ = [k for k in recovery_check.compare(lost.before, lost.after) if not k.ok]
    assert not differ, "\n".join(f"{k.kind}: {k.equal}/{k.total} equal; " + "\n  ".join(k.examples) for k in differ)
    rows = worker.get("/v1/admin/ledger/totals", admin=True)[1]
    took = lost.seconds
    print(f"rebuild after Redis lost everything: {len(lost.before.states):,} members, {rows['movements']:,} ledger "
          f"rows ({rows['events']:,} events) in {took:.1f} s = {rows['events'] / took:,.0f} events/s; every member "
          "equal kind by kind", flush=True)
    return {"rebuild_s": round(took, 1), "rebuild_members": len(lost.before.states), "rebuild_events": rows["events"]}


def settled_metrics(worker: WorkerProcess, quiet_s: float = 2.0, timeout_s: float = 60.0) -> dict[str, int]:
    """The worker's counters once events decoded and scheduled events sent have not moved
    for `quiet_s` (after the drain, only the worker's own timers still send events)."""
    deadline = time.monotonic() + timeout_s
    last = worker.metrics()
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        m = worker.metrics()
        key = ("events_total", "scheduled_events_sent_total", "refunds_released_total")
        if any(m[k] != last[k] for k in key):
            last, still_since = m, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            return m
    return last


def resent(m: dict[str, int]) -> int:
    """Events a worker itself sends to the topics it reads (not part of the N preloaded):
    member events of its schedules (wallet checks releasing the pending points of these past
    days, tier reviews) and held refunds sent again once their payment is applied (counted
    once as held, once as applied)."""
    return m["scheduled_events_sent_total"] + m["refunds_released_total"]


def accounted(m: dict[str, int], with_resent: bool = True) -> int:
    """Preloaded events a worker has accounted for (applied, duplicate, refused, guest, held)."""
    out = (m["events_applied_total"] + m["events_duplicate_total"] + m["events_rejected_total"]
           + m["events_guest_total"] + m["refunds_held_total"])
    return out - resent(m) if with_resent else out


def drain(accrual: list[WorkerProcess], ledger: WorkerProcess, total: int) -> tuple[float, dict[str, Any]]:
    """Seconds from the first applied event until `total` events are accounted for by the
    accrual workers and the ledger worker has every applied row; the reconcile answer."""
    def done() -> int:
        out = 0
        for w in accrual:
            m = w.metrics()
            out += accounted(m, with_resent=False)
        for w in [*accrual, ledger]:
            out -= resent(w.metrics())
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
        packed = list(envelopes(events, envelope_size()[0]))
        asyncio.run(preload(settings.kafka_bootstrap, f"{run_id}.payments", packed))
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
