"""Ingress capacity: one ingress process (the HTTP service, no agents) against one bare
aiohttp process that answers 202 without work, under the same load generator, in one run.

The generator is Debian's `wrk` with a Lua script that replays pre-signed payment
callbacks (each with its own nonce, so none is refused as a replay), pinned to core 1;
the process under test is pinned to core 0 (Kafka and Redis float). For the ingress,
every callback goes through HMAC verification, the nonce claim, validation in the core
and the group commit into envelopes acked by Kafka (acks=all). Checked before reporting:
no non-2xx answer, and the topic holds exactly the callbacks accepted (every envelope
unpacked). Also recorded: the mean events per envelope the ingress produced, which the
pipeline benchmark uses for its preload.

Run: `scripts/bench ingress` (LOYALTY_BENCH_SECONDS, default 20; LOYALTY_BENCH_CONNECTIONS, 256).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

import core_ext
from benchmarks.results import record
from devtools.workers import WorkerProcess, free_port, remove_run_data
from streams.settings import ROOT, Settings
from streams.signing import signed_headers

SCRIPT = ROOT / "benchmarks" / "wrk" / "signed.lua"


def _requests(path: Path, n: int, secret: str) -> None:
    rng = random.Random(7)
    with path.open("w") as f:
        for _ in range(n):
            body = orjson.dumps({
                "event_id": f"ing-{uuid.uuid4().hex[:16]}", "type": "payment",
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                "member_id": f"m-{rng.randrange(100_000):05d}", "bu_id": "sh-mall",
                "merchant_id": f"sh-mall-shop-{rng.randrange(60):02d}", "category": "fashion",
                "amount_fen": rng.randint(500, 500_000), "channel": "wechat"})
            h = signed_headers(secret, body)
            f.write(f"{h['X-Timestamp']}\t{h['X-Nonce']}\t{h['X-Signature']}\t{body.decode()}\n")


def _wrk(url: str, seconds: int, connections: int, requests_file: Path) -> tuple[float, float, int, int]:
    """(requests/s, p99 ms, requests, non-2xx) of one wrk run, wrk pinned to core 1."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
         "-s", str(SCRIPT), url, "--", str(requests_file)],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, float(p99.group(1)) * scale, total, int(bad.group(1)) if bad else 0


def _pin(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)], check=True, capture_output=True)


async def _events_in(topic: str, bootstrap: str, expected: int) -> int:
    """Events the topic holds (envelopes unpacked), read until `expected` or 10 s of silence."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"count-{uuid.uuid4().hex[:8]}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        total, quiet_since = 0, time.monotonic()
        while total < expected and time.monotonic() - quiet_since < 10:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                total += sum(len(core_ext.envelope_unpack(r.value)) for r in records)
                quiet_since = time.monotonic()
        return total
    finally:
        await consumer.stop()


def test_ingress_capacity_vs_a_bare_endpoint(tmp_path: Path) -> None:
    assert shutil.which("wrk") and shutil.which("taskset"), "scripts/bench installs wrk (Debian's package)"
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    settings = Settings.from_env()
    seconds = int(os.environ.get("LOYALTY_BENCH_SECONDS", "20"))
    connections = int(os.environ.get("LOYALTY_BENCH_CONNECTIONS", "256"))

    port = free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare_server.py"), str(port)], cwd=ROOT)
    try:
        time.sleep(1.5)
        _pin(bare.pid, 0)
        warm = tmp_path / "warm.tsv"
        _requests(warm, 20_000, "unused")
        bare_rps, bare_p99, _, bare_bad = _wrk(f"http://127.0.0.1:{port}/v1/callbacks/payment", seconds,
                                              connections, warm)
        assert bare_bad == 0
    finally:
        bare.terminate()
        bare.wait(10)
    print(f"\nbare aiohttp endpoint: {bare_rps:,.0f} requests/s, p99 {bare_p99:.1f} ms", flush=True)

    run_id = f"ing-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id, extra_env={"LOYALTY_ROLES": "ingress"})
    worker.start()
    try:
        assert worker.proc is not None
        _pin(worker.proc.pid, 0)
        reqs = tmp_path / "signed.tsv"
        _requests(reqs, int(max(bare_rps, 5_000) * seconds * 1.1), worker.callback_secret)
        rps, p99, total, bad = _wrk(worker.base_url + "/v1/callbacks/payment", seconds, connections, reqs)
        time.sleep(2)  # the requests in flight when wrk stopped are answered
        m = worker.metrics()
        accepted = m["callbacks_accepted_total"]
        print(f"wrk: {total:,} answers, {bad:,} not 2xx; the ingress accepted {accepted:,}", flush=True)
        assert bad == 0, f"{bad} callbacks were not accepted (a replayed nonce means too few requests were signed)"
        # wrk counts the answers it read within its window; requests in flight at its end
        # were accepted too (at most one per connection).
        assert total <= accepted <= total + connections, (accepted, total)
        held = asyncio.run(_events_in(f"{run_id}.payments", settings.kafka_bootstrap, accepted))
        assert held == accepted, f"the topic holds {held} events for {accepted} accepted callbacks"
        envelopes = m["envelopes_sent_total"]
        mean = m["envelope_events_sum"] / max(1, m["envelope_events_count"])
    finally:
        worker.stop()
        remove_run_data(settings.kafka_bootstrap, settings.redis_url, run_id)
    ratio = rps / bare_rps
    print(f"ingress (HMAC, nonce, validation, group commit, Kafka acks=all): {rps:,.0f} callbacks/s, "
          f"p99 {p99:.1f} ms; {accepted:,} accepted in {envelopes:,} records, mean envelope {mean:.1f} events",
          flush=True)
    print(f"ratio: ingress / bare endpoint = {ratio:.2f} ({connections} connections, {seconds} s, wrk on core 1, "
          "server on core 0)")
    record(ingress_rps=round(rps), ingress_p99_ms=round(p99, 1), bare_rps=round(bare_rps),
           bare_p99_ms=round(bare_p99, 1), ingress_ratio=round(ratio, 2), ingress_envelope_mean=round(mean, 1))
