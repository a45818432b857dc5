"""A Redis primary added and slots moved to it while callbacks flow (issue 22, rebalancing):
the accrual meets MOVED / ASK / TRYAGAIN and a primary without the engine's functions, reads
the slot map again, retries, and every event counts once. Afterwards the slots go back to
the three primaries and the node leaves the cluster (the next run starts from the same
shape)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.workers import WorkerProcess
from tests.integration.test_faults import Gateway, check_exactly_once, during, make_events

pytestmark = pytest.mark.cluster

NEW_PORT = 7107


def cli(*args: str, timeout: float = 300) -> str:
    out = subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def a_live_node() -> int:
    for port in range(7101, 7107):
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return port
        except redis.RedisError:
            continue
    raise AssertionError("no node of the cluster answers")


def slots_of(node_id: str, port: int) -> int:
    nodes = str(redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER", "NODES"))
    line = next(x for x in nodes.splitlines() if x.startswith(node_id))
    count = 0
    for part in line.split()[8:]:
        if part.startswith("["):
            continue
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def test_a_primary_added_and_slots_moved_to_it_while_traffic_flows(worker_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / f"redis-{NEW_PORT}"
    data.mkdir()
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(NEW_PORT), "--dir", str(data),
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
                    "3000", "--appendonly", "yes", "--save", "", "--daemonize", "yes",
                    "--pidfile", str(data / "redis.pid"), "--logfile", str(data / "redis.log")], check=True)
    seed = a_live_node()
    new_id = ""
    try:
        for _ in range(50):
            try:
                if redis.Redis(port=NEW_PORT, socket_timeout=1).ping():
                    break
            except redis.RedisError:
                time.sleep(0.1)
        new_id = cli("-p", str(NEW_PORT), "cluster", "myid").strip()
        cli("--cluster", "add-node", f"127.0.0.1:{NEW_PORT}", f"127.0.0.1:{seed}")
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in cli("-p", str(NEW_PORT), "cluster", "info"):
            assert time.monotonic() < deadline, "the new node never saw the cluster ok"
            time.sleep(0.3)

        w: WorkerProcess = worker_factory("reshard", LOYALTY_BATCH_SIZE="50")
        w.start()
        w.wait_caught_up()
        events = make_events(2_000, f"rs-{uuid.uuid4().hex[:6]}")
        gw = Gateway(w)
        moved: list[str] = []

        def reshard() -> None:
            moved.append(cli("--cluster", "reshard", f"127.0.0.1:{seed}", "--cluster-from", "all", "--cluster-to",
                             new_id, "--cluster-slots", "1500", "--cluster-yes"))

        t = during(gw, 400, reshard)
        asyncio.run(gw.send_all(events, give_up_s=400))
        t.join(300)
        assert moved, "the resharding did not finish"
        on_new = slots_of(new_id, seed)
        check_exactly_once(w, events, f"a Redis primary added and {on_new:,} slots moved to it mid-stream",
                           f"resharded after 400 callbacks; {gw.retries} gateway retries")
        # redis-cli takes the 1,500 from the three primaries in proportion, rounding down.
        assert 1_400 <= on_new <= 1_500, on_new
    finally:
        if new_id:
            # The slots back to the three primaries, then the node leaves (del-node stops it).
            cli("--cluster", "rebalance", f"127.0.0.1:{seed}", "--cluster-weight", f"{new_id}=0", "--cluster-yes")
            cli("--cluster", "del-node", f"127.0.0.1:{seed}", new_id)
        pid_file = data / "redis.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
