"""The engine on the Redis Cluster and the three-broker Kafka (issue 22).

tests/integration's pipeline tests (callback to balance, duplicates, refunds, Redis = ledger =
the reference, every key of a known bounded family), the two-worker budget test and the
wallet's concurrent redemptions run here unchanged against the cluster (tests/cluster's
conftest points every client at it). Then the fault: the primary that serves the stream's
members is killed with SIGKILL mid-stream, its replica is promoted, the accrual and the
ingress find the new primary, `loyalty reconcile --repair` restores from the durable facts
whatever the replica had not received (Redis replication is asynchronous), and every event
counts once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.workers import WorkerProcess
from streams.settings import ROOT
from tests.integration.test_faults import Gateway, check_exactly_once, during, make_events
from tests.integration.test_pipeline import (  # noqa: F401 - collected here, on the cluster
    test_random_callbacks_redis_equals_ledger_equals_reference,
    test_redis_holds_only_keys_of_known_families_each_bounded,
    test_refund_claws_back_points,
    test_same_callback_twice_counts_once,
    test_signed_callback_becomes_points_visible_in_member_api,
)
from tests.integration.test_rules_in_motion import (  # noqa: F401
    rules_file,
    test_budget_exhausted_mid_stream_is_never_overspent_by_two_workers,
)
from tests.integration.test_wallet import test_parallel_redemptions_never_overdraw  # noqa: F401

from .conftest import REDIS_URL, run_services

pytestmark = pytest.mark.cluster


def test_the_worker_runs_on_the_cluster(worker: WorkerProcess) -> None:
    """The worker found the cluster: its log says so, and a member's keys sit on the primary
    that serves their slot (not all on the node the URL names)."""
    log = worker.log_path.read_text() if worker.log_path else ""
    assert "Redis is a cluster of 3 primaries" in log
    status, _ = worker.send_callback({"event_id": f"c-{uuid.uuid4().hex[:8]}", "type": "payment",
                                      "occurred_at": "2026-11-23T12:00:00+08:00", "member_id": "c-one",
                                      "bu_id": "sh-mall", "merchant_id": "shop-1", "category": "fashion",
                                      "amount_fen": 10_000, "channel": "alipay"})
    assert status == 202
    worker.wait_until(lambda: worker.get("/v1/members/c-one")[1].get("events") == 1, 60, "the payment applied")
    cluster = redis.RedisCluster.from_url(REDIS_URL)
    try:
        key = f"{worker.run_id}:m:{{c-one}}"
        node = cluster.get_node_from_key(key)
        assert redis.Redis(host=node.host, port=node.port).hget(key, "balance") is not None
    finally:
        cluster.close()


def primary_of(member_ids: list[str], namespace: str) -> tuple[int, int]:
    """The port of the primary that serves most of these members' keys, and how many."""
    cluster = redis.RedisCluster.from_url(REDIS_URL)
    try:
        ports: dict[int, int] = {}
        for m in member_ids:
            port = cluster.get_node_from_key(f"{namespace}:m:{{{m}}}").port
            ports[port] = ports.get(port, 0) + 1
        port = max(ports, key=lambda p: ports[p])
        return port, ports[port]
    finally:
        cluster.close()


def wait_promoted(dead_port: int, key: str, timeout_s: float = 60) -> int:
    """Waits until a surviving node reports the cluster ok and the slot of `key` served by
    a primary other than the dead one; that primary's port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for port in (p for p in range(7101, 7107) if p != dead_port):
            try:
                node = redis.Redis(port=port, decode_responses=True, socket_timeout=1)
                if "cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
                    continue
                slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end) and int(primary[1]) != dead_port:
                        return int(primary[1])
            except redis.RedisError:
                continue
        time.sleep(0.5)
    raise AssertionError(f"no replica of 127.0.0.1:{dead_port} was promoted in {timeout_s} s")


def test_a_primary_killed_mid_stream_its_replica_promoted(worker_factory: Any) -> None:
    w: WorkerProcess = worker_factory("rc-kill", LOYALTY_BATCH_SIZE="50")
    w.start()
    w.wait_caught_up()
    tag = f"rck-{uuid.uuid4().hex[:6]}"
    events = make_events(1_500, tag)
    port, served = primary_of(sorted({e["member_id"] for e in events}), w.run_id)
    gw = Gateway(w)
    promoted: list[int] = []

    def kill_primary() -> None:
        pid = int((ROOT / ".local" / "run" / f"cluster-redis-{port}.pid").read_text())
        subprocess.run(["kill", "-9", str(pid)], check=True)
        promoted.append(wait_promoted(port, f"{w.run_id}:m:{{{events[0]['member_id']}}}"))

    t = during(gw, 500, kill_primary)
    try:
        asyncio.run(gw.send_all(events, give_up_s=400))
        t.join(120)
        assert promoted, "the replica was not promoted"
        distinct = len({e["event_id"] for e in events})
        w.wait_until(lambda: w.get("/v1/admin/ledger/totals")[1].get("events", 0) >= distinct, 180,
                     "every event in the ledger")
        w.wait_caught_up()
        out = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--repair"], env=w.env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        check_exactly_once(w, events, "a Redis Cluster primary SIGKILLed mid-stream, its replica promoted; "
                           "reconcile --repair",
                           f"{served} of 60 members on 127.0.0.1:{port}, promoted 127.0.0.1:{promoted[0]}; "
                           f"{gw.retries} gateway retries; " + out.stdout.splitlines()[0][:100])
    finally:
        # The killed node comes back as a replica of the promoted one.
        run_services("up", "--cluster")


def test_a_worker_added_while_traffic_flows(worker_factory: Any, tmp_path: Path) -> None:
    """A second accrual worker joins the group mid-stream: the partitions are rebalanced
    between the two while callbacks flow, and every event is applied once."""
    first: WorkerProcess = worker_factory("rebal", LOYALTY_BATCH_SIZE="50")
    first.start()
    first.wait_caught_up()
    second = WorkerProcess(run_id=first.run_id, data_dir=tmp_path / "second", callback_secret=first.callback_secret,
                           admin_token=first.admin_token,
                           extra_env={**first.extra_env, "LOYALTY_ROLES": "accrual,notifier,parking"})
    events = make_events(3_000, f"rb-{uuid.uuid4().hex[:6]}")
    gw = Gateway(first)
    joined: list[float] = []

    def add_worker() -> None:
        second.start()
        joined.append(gw.accepted)

    t = during(gw, 300, add_worker)
    try:
        asyncio.run(gw.send_all(events, give_up_s=400))
        t.join(120)
        assert joined, "the second worker did not start"
        first.wait_until(lambda: second.metrics()["events_applied_total"] > 0, 60, "the second worker applying")
        second.wait_caught_up()
        shares = [w.metrics()["events_applied_total"] for w in (first, second)]
        check_exactly_once(first, events, "a second accrual worker added mid-stream, the partitions rebalanced",
                           f"joined after {int(joined[0]):,} callbacks accepted; applied by the two: {shares}")
        assert sum(shares) == len(events), shares
    finally:
        second.stop()
