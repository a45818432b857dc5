"""Scale-out on the distributed services (issue 22): the same N events (the demo's mix, as
benchmarks/test_pipeline_throughput.py makes them) drained by 1, 2 and 3 accrual worker
processes in one consumer group, with a ledger worker holding the embedded ClickHouse store,
over the Redis Cluster (3 primaries, 3 replicas) and the three-broker Kafka (replication 3,
min.insync.replicas 2, acks=all) of `scripts/services up --cluster`.

For each: events/s from the first applied event until every event is accounted for and the
ledger has every row; CPU µs per event of each part (the accrual processes, the ledger
worker, the six Redis nodes, the three brokers, the rest of the machine) — the inputs of
docs/capacity.md. Correctness inside: reconcile clean (Redis = ledger) for each, and the
three runs end with the same points in total.

Run: `scripts/bench scale-out --cluster [--events N]` (default 100,000).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from benchmarks.cpu import CpuAccount
from benchmarks.results import record
from benchmarks.test_pipeline_throughput import drain, envelope_size, envelopes, make_events, preload
from devtools.workers import WorkerProcess, remove_run_data
from streams.settings import ROOT

REDIS_URL = "redis://127.0.0.1:7101/0"
BROKERS = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
#: Divisible by 1, 2 and 3: each accrual process gets the same share.
PARTITIONS = 6
CLUSTER_ENV = {"LOYALTY_REDIS_URL": REDIS_URL, "LOYALTY_KAFKA_BOOTSTRAP": BROKERS,
               "LOYALTY_TOPIC_REPLICATION_FACTOR": "3", "LOYALTY_TOPIC_MIN_INSYNC_REPLICAS": "2",
               "LOYALTY_PARTITIONS": str(PARTITIONS), "LOYALTY_BATCH_SIZE": "2000",
               "LOYALTY_LEDGER_BATCH_SIZE": "50"}


async def create_replicated(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 3, topic_configs={"min.insync.replicas": "2"})])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


def topic_bytes_per_event(run_id: str, events: int) -> dict[str, int]:
    """Bytes each topic of the run holds per event, one copy (the brokers' log directories
    summed, divided by the replication factor): what a capacity model sizes disks and
    networks by."""
    out: dict[str, int] = {}
    for log_dir in (ROOT / ".local" / "data" / "cluster").glob("kafka-[0-9]"):
        for part in log_dir.glob(f"{run_id}.*"):
            topic = part.name[len(run_id) + 1:].rsplit("-", 1)[0]
            size = sum(f.stat().st_size for f in part.glob("*.log"))
            out[topic] = out.get(topic, 0) + size
    return {t: round(b / 3 / max(1, events)) for t, b in sorted(out.items())}


def payments_assigned(accrual: list[WorkerProcess]) -> bool:
    """Every payments partition owned, each by one accrual process, every process owning some."""
    owned = [{a for a in w.get("/healthz")[1].get("assigned", []) if ".payments:" in a} for w in accrual]
    union = set().union(*owned)
    return all(owned) and len(union) == PARTITIONS and sum(len(o) for o in owned) == PARTITIONS


def run_with(count: int, packed: list[tuple[bytes, int, bytes]], total: int, tmp: Path,
             **env: str) -> dict[str, Any]:
    run_id = f"bench-c{count}-{uuid.uuid4().hex[:6]}"
    ledger = WorkerProcess(run_id=run_id, data_dir=tmp / run_id / "ledger",
                           extra_env={**CLUSTER_ENV, **env, "LOYALTY_ROLES": "ledger"})
    accrual = [WorkerProcess(run_id=run_id, data_dir=tmp / run_id / f"a{i}", callback_secret=ledger.callback_secret,
                             admin_token=ledger.admin_token,
                             extra_env={**CLUSTER_ENV, **env, "LOYALTY_ROLES": "accrual,notifier,parking"})
               for i in range(count)]
    try:
        asyncio.run(create_replicated(f"{run_id}.payments"))
        for w in [ledger, *accrual]:
            w.start()
        ledger.wait_until(lambda: payments_assigned(accrual), 120, f"{count} accrual processes sharing the partitions")
        assert ledger.proc is not None
        cpu = CpuAccount(worker_pid=ledger.proc.pid,
                         extra={f"accrual-{i}": w.proc.pid for i, w in enumerate(accrual) if w.proc is not None})
        cpu.start()
        asyncio.run(preload(BROKERS, f"{run_id}.payments", packed))  # type: ignore[arg-type]
        rate, rec = drain(accrual, ledger, total)
        cpu.stop()
        topic_bytes = topic_bytes_per_event(run_id, total)
        shares = [w.metrics()["events_applied_total"] for w in accrual]
        assert all(s > 0 for s in shares), shares
        per = cpu.per_event(total)
        accrual_us = sum(v for k, v in per.items() if k.startswith("accrual-"))
        out = {"events_per_s": round(rate), "applied_per_process": shares, "redis_total": rec["redis_total"],
               "us_per_event": {"accrual": round(accrual_us, 1), "ledger_worker": round(per["worker"], 1),
                                "redis": round(per["redis"], 1), "kafka": round(per["kafka"], 1),
                                "other": round(per["other"], 1), "machine": round(per["machine"], 1)},
               "machine_busy": round(cpu.machine_busy, 2), "topic_bytes_per_event": topic_bytes}
        out["wait_replicas"] = int(env.get("LOYALTY_REDIS_WAIT_REPLICAS", "1"))
        print(f"\n{count} accrual process(es), WAIT for {out['wait_replicas']} replica(s): {total:,} events at "
              f"{rate:,.0f} events/s; applied per process {shares}; Redis = ledger {rec['redis_total']:,} points; "
              f"CPU µs/event {out['us_per_event']}; machine busy {cpu.machine_busy:.0%}; topic bytes per event "
              f"{topic_bytes}", flush=True)
        return out
    finally:
        for w in [ledger, *accrual]:
            w.stop()
        remove_run_data(BROKERS, REDIS_URL, run_id)


def test_scale_out_one_two_three_accrual_processes_on_the_cluster(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up", "--cluster"], check=True)
    n = int(os.environ.get("LOYALTY_BENCH_EVENTS", "100000"))
    events = make_events(n)
    size, _source = envelope_size()
    packed = envelopes(events, size, PARTITIONS)
    runs: dict[str, dict[str, Any]] = {}
    for count in (1, 2, 3):
        runs[str(count)] = run_with(count, packed, len(events), tmp_path)
        time.sleep(2)
    # The cost of waiting for the replica: one process again without WAIT.
    runs["1-no-wait"] = run_with(1, packed, len(events), tmp_path, LOYALTY_REDIS_WAIT_REPLICAS="0")
    # Every run applied the same events (each partition's events in order). The points may
    # differ by a few thousandths: a guest payment and its payer's registration are on
    # different partitions, and which comes first (credited at registration, or resolved at
    # payment) depends on the run's timing.
    applied = {sum(r["applied_per_process"]) for r in runs.values()}
    assert len(applied) == 1, f"the same events, applied differently: {applied}"
    totals = [r["redis_total"] for r in runs.values()]
    assert max(totals) - min(totals) <= max(totals) // 1000, totals
    one = runs["1"]["events_per_s"]
    ratios = {c: round(r["events_per_s"] / one, 2) for c, r in runs.items()}
    print(f"scale-out on the cluster: {', '.join(f'{c} = {r:.2f}x' for c, r in ratios.items())} of one process "
          f"with WAIT; points per run {totals}; {psutil.cpu_count()} cores", flush=True)
    record(cluster_scale_out=runs, cluster_scale_out_ratios=ratios, cluster_scale_out_events=len(events))
