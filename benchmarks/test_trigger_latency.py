"""Trigger latency: payment callback sent -> coupon push received by a webhook.

A worker over the real Kafka, Redis and ClickHouse (the notifier in a process of its own), a
real local webhook receiver (benchmarks/push_receiver.py, its own process), and a
steady load of signed payment callbacks (LOYALTY_BENCH_RATE, default 1,000/s, for
LOYALTY_BENCH_SECONDS, default 15) whose every payment fires a `spend` trigger, so every
event issues a coupon and a push. Every body is signed before the clock starts; request i
leaves at t0 + i / rate (a fixed timetable over keep-alive connections,
benchmarks/sender.py) to an ingress process (the agents in a worker of their own), and the
sender notes the wall-clock time right before each request is
written. Latency = the receiver's arrival time - that send time. Prints p50 / p90 / p99 /
max and how far the sender fell behind its timetable (max lag), after checking that every
callback was answered 202 and every push arrived exactly once (a fast wrong answer does
not count). The figures go to benchmarks/results/latest.json only from a run at 1,000/s
for at least 15 s. Bar: p99 < 1 s. Run: `scripts/bench trigger`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from benchmarks.cpu import CpuAccount
from benchmarks.results import record
from benchmarks.sender import send_on_timetable
from devtools.workers import WorkerProcess, free_port
from streams.settings import ROOT
from streams.signing import signed_headers
from tests.fixtures import rules_toml
from tests.integration.test_marketing import PUSH_SECRET

RULES = rules_toml("""
version = "bench-triggers"
utc_offset_minutes = 480
""", "mall", "normal_tier", tail="""
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
""")


RECORDED_RATE = 1_000
RECORDED_SECONDS = 15


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def _signed_payments(secret: str, count: int) -> tuple[list[str], list[tuple[bytes, dict[str, str]]]]:
    """The event id and the signed request (body, headers) of each payment, built before the
    clock starts; every request has its own nonce."""
    members = [f"b-{i:04d}" for i in range(2_000)]
    ids, requests = [], []
    for n in range(count):
        ev = {"event_id": f"lat-{uuid.uuid4().hex[:16]}", "type": "payment",
              "occurred_at": "2026-11-23T12:00:00+08:00", "member_id": members[n % len(members)],
              "bu_id": "mall", "merchant_id": "s1", "category": "food", "amount_fen": 1_000 + n % 5_000,
              "channel": "wechat"}
        body = orjson.dumps(ev)
        ids.append(ev["event_id"])
        requests.append((body, signed_headers(secret, body)))
    return ids, requests


def _arrivals(path: Path) -> list[tuple[float, str, str, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            out.append((float(parts[0]), parts[1], parts[2], parts[3]))
    return out


def test_trigger_latency_sent_to_push_received(tmp_path: Path) -> None:
    from tests.integration.conftest import new_worker

    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    rate = int(os.environ.get("LOYALTY_BENCH_RATE", str(RECORDED_RATE)))
    seconds = int(os.environ.get("LOYALTY_BENCH_SECONDS", str(RECORDED_SECONDS)))
    rules = tmp_path / "bench.toml"
    rules.write_text(RULES)
    port, log = free_port(), tmp_path / "pushes.tsv"
    receiver = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "push_receiver.py"), str(port),
                                 PUSH_SECRET, str(log)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/push"
    # The production shape (docs/scaling.md): an ingress process, the accrual and ledger in a
    # worker, the notifier in a process of its own; the receiver too. Batching as configured
    # in production unless LOYALTY_BENCH_BATCH_WITHIN says otherwise (a shorter wait gives
    # smaller batches, which cost more CPU an event on a machine this load saturates).
    within = {"LOYALTY_BATCH_WITHIN": os.environ["LOYALTY_BENCH_BATCH_WITHIN"]} \
        if "LOYALTY_BENCH_BATCH_WITHIN" in os.environ else {}
    worker = new_worker(tmp_path, "latency", LOYALTY_RULES=str(rules), LOYALTY_ROLES="accrual,ledger,parking",
                        **within)
    others = [WorkerProcess(run_id=worker.run_id, data_dir=tmp_path / f"{worker.run_id}-{role}",
                            callback_secret=worker.callback_secret, admin_token=worker.admin_token,
                            extra_env={"LOYALTY_ROLES": role, "LOYALTY_RULES": str(rules),
                                       "LOYALTY_PUSH_WEBHOOK_URL": url, "LOYALTY_PUSH_SECRET": PUSH_SECRET})
              for role in ("ingress", "notifier")]
    ingress, notifier = others
    worker.start()
    for w in others:
        w.start()
    try:
        event_ids, requests = _signed_payments(worker.callback_secret, rate * seconds)
        cpu = CpuAccount(worker.proc.pid if worker.proc else 0, extra={
            "ingress": ingress.proc.pid if ingress.proc else 0, "notifier": notifier.proc.pid if notifier.proc else 0,
            "receiver": receiver.pid, "sender": os.getpid()}, alone=frozenset({"sender"}))
        cpu.start()
        sent = asyncio.run(send_on_timetable(ingress.base_url + "/v1/callbacks/payment", requests, rate))
        failed = Counter(s for s in sent.status if s != 202)
        assert not failed and not sent.errors, f"callbacks not answered 202: {dict(failed)} {dict(sent.errors)}"
        accepted = dict(zip(event_ids, sent.send_ms, strict=True))
        worker.wait_until(lambda: len(_arrivals(log)) >= len(accepted), timeout=600, what="every push")
        cpu.stop()
        time.sleep(1.0)  # a push arriving twice would show now
        arrivals = _arrivals(log)
        coupons = [(e, t) for t, _pid, kind, e in arrivals if kind == "coupon_issued"]
        arrived = {e: t for e, t in coupons}
        ids = Counter(pid for _t, pid, _k, _e in arrivals)
        assert set(arrived) == set(accepted), "a push is missing or unexpected"
        assert all(n == 1 for n in ids.values()), "a push arrived twice"
        assert len(coupons) == len(accepted), "an event's coupon was pushed twice"
        lat = [arrived[e] - t for e, t in accepted.items()]
        p50, p90, p99, worst = _pct(lat, 0.5), _pct(lat, 0.9), _pct(lat, 0.99), max(lat)
        print(f"\nsent -> push received at {rate}/s for {seconds}s ({sent.elapsed_s:.1f} s): "
              f"{len(accepted):,} payments, all 202, each coupon pushed once; "
              f"p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms; "
              f"sender max lag {sent.max_lag_ms:.1f} ms")
        us = cpu.per_event(len(accepted))
        print("CPU µs per payment (one push each), first callback to last push: "
              + ", ".join(f"{k} {v:.0f}" for k, v in us.items())
              + f"; the machine {cpu.machine_busy:.0%} busy")
        if sent.max_lag_ms > 50:
            print(f"the sender fell behind its timetable by up to {sent.max_lag_ms:.0f} ms: "
                  "the load was not steady at the stated rate")
        m = worker.metrics()
        n = max(1, len(accepted))
        phases = ", ".join(f"{k} {m.get(f'accrual_phase_{k}_us_total', 0) / n:.0f}"
                           for k in ("decode", "read", "evaluate", "reserve", "outbox", "write", "settle", "guests",
                                     "send", "trim", "after"))
        batches = max(1, m["batch_size_count"])
        print(f"  {batches:,} accrual batches (mean {m['batch_size_sum'] / batches:.0f} events); "
              f"accrual wall µs per event: {phases}")
        nm = notifier.metrics()
        print(f"pushes delivered {nm['pushes_delivered_total']}, duplicates skipped {nm['pushes_duplicate_total']}, "
              f"mean processed->delivered {nm['push_latency_ms_sum'] / max(1, nm['push_latency_ms_count']):.0f} ms")
        if rate == RECORDED_RATE and seconds >= RECORDED_SECONDS:
            record(trigger_p50_ms_at_1000=round(p50), trigger_p99_ms_at_1000=round(p99),
                   trigger_max_ms_at_1000=round(worst))
            print("recorded in benchmarks/results/latest.json")
        else:
            print(f"not recorded (only a run at {RECORDED_RATE}/s for >= {RECORDED_SECONDS} s is)")
    finally:
        for w in others:
            w.stop()
        worker.stop()
        worker.cleanup()
        receiver.terminate()
        receiver.wait(10)


def test_notifier_alone_capacity(tmp_path: Path) -> None:
    """The notifier's own ceiling on this machine: RECORDED_RATE * RECORDED_SECONDS pushes
    preloaded on its topic the way the accrual sends them (envelopes per partition), then
    drained by one notifier process into the receiver with nothing else running. Checks
    that every push arrived exactly once; prints pushes/s and the notifier's CPU."""
    from benchmarks.test_pipeline_throughput import preload, wait
    from streams.ingress import pack_by_partition
    from streams.pushes import coupon_push
    from streams.settings import Settings
    from tests.integration.conftest import new_worker

    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    count = RECORDED_RATE * RECORDED_SECONDS
    settings = Settings.from_env()
    rules = tmp_path / "bench.toml"
    rules.write_text(RULES)
    port, log = free_port(), tmp_path / "pushes.tsv"
    receiver = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "push_receiver.py"), str(port),
                                 PUSH_SECRET, str(log)], cwd=ROOT)
    notifier = new_worker(tmp_path, "notify", LOYALTY_RULES=str(rules), LOYALTY_ROLES="notifier",
                          LOYALTY_PUSH_WEBHOOK_URL=f"http://127.0.0.1:{port}/push", LOYALTY_PUSH_SECRET=PUSH_SECRET)
    now = int(time.time() * 1000)
    pushes = [(f"b-{n % 2_000:04d}".encode(), coupon_push({
        "coupon_id": f"c-{uuid.uuid4().hex[:16]}", "member_id": f"b-{n % 2_000:04d}", "event_id": f"e{n}",
        "template": "thanks", "trigger": "every-payment", "coupon_kind": "amount_off", "face_value_fen": 500,
        "valid_until_ms": now + 7 * 86_400_000, "occurred_at_ms": now, "processed_at_ms": now}))
        for n in range(count)]
    # As the accrual sends them at 1,000/s: a batch of ~25 events a round, packed per partition.
    records = [(k, p, v) for i in range(0, count, 25)
               for p, k, v in pack_by_partition(pushes[i:i + 25], 4, settings.envelope_max_events,
                                                settings.envelope_max_bytes)]
    try:
        asyncio.run(preload(settings.kafka_bootstrap, f"{notifier.run_id}.coupon-pushes", records))
        notifier.start()
        pid = notifier.proc.pid if notifier.proc is not None else 0
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        t1 = wait(lambda: len(_arrivals(log)) >= count, 600, "every push", every=0.1)
        cpu = _cpu_s(pid) - cpu0
        time.sleep(1.0)
        ids = Counter(pid for _t, pid, _k, _e in _arrivals(log))
        assert len(ids) == count and all(n == 1 for n in ids.values()), "a push is missing or arrived twice"
        first = min(t for t, *_ in _arrivals(log)) / 1000
        last = max(t for t, *_ in _arrivals(log)) / 1000
        rate = count / max(1e-9, last - first)
        print(f"\nnotifier alone: {count:,} preloaded pushes ({len(records):,} records) delivered once each at "
              f"{rate:,.0f} pushes/s (first to last arrival); notifier CPU {cpu / max(1e-9, t1 - t0) * 100:.0f}% "
              f"of a core, {cpu / count * 1e6:.0f} µs per push (start-up included)")
        record(notifier_alone_pushes_per_s=round(rate))
    finally:
        notifier.stop()
        notifier.cleanup()
        receiver.terminate()
        receiver.wait(10)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    pytest.main([__file__, "-s"])
