"""The engine on the three-broker Kafka (issue 22): every topic it creates is replicated
three times with min.insync.replicas 2 (settings, not hard-coded), and a broker killed
mid-stream and started again loses and doubles nothing."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devtools.workers import WorkerProcess
from streams.settings import ROOT
from tests.integration.test_faults import Gateway, check_exactly_once, make_events

from .conftest import run_services

pytestmark = pytest.mark.cluster

BROKERS = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"


services = run_services


def test_a_broker_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    services("up", "--cluster")
    run_id = f"t-kc-{uuid.uuid4().hex[:8]}"
    w = WorkerProcess(run_id=run_id, data_dir=tmp_path / run_id, extra_env={
        "LOYALTY_KAFKA_BOOTSTRAP": BROKERS, "LOYALTY_TOPIC_REPLICATION_FACTOR": "3",
        "LOYALTY_TOPIC_MIN_INSYNC_REPLICAS": "2", "LOYALTY_BATCH_SIZE": "50", "LOYALTY_PUBLISH_TIMEOUT": "5"})
    w.start()
    try:
        w.wait_caught_up()

        async def topics() -> dict[str, tuple[int, str]]:
            admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
            await admin.start()
            try:
                names = [f"{run_id}.{t}" for t in ("payments", "ledger", "member-events", "dead-letter")]
                out: dict[str, tuple[int, str]] = {}
                for d in await admin.describe_topics(names):
                    (cfg,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, d["topic"])])
                    configs = {c[0]: c[1] for c in cfg.resources[0][4]}
                    out[d["topic"]] = (min(len(p["replicas"]) for p in d["partitions"]), configs["min.insync.replicas"])
                return out
            finally:
                await admin.close()

        assert set(asyncio.run(topics()).values()) == {(3, "2")}
        events = make_events(1_500, f"kc-{uuid.uuid4().hex[:6]}")
        gw = Gateway(w)

        def kill_and_restart() -> None:
            while gw.accepted < 500:
                time.sleep(0.05)
            pid = int((ROOT / ".local" / "run" / "cluster-kafka-2.pid").read_text())
            subprocess.run(["kill", "-9", str(pid)], check=True)
            time.sleep(5)
            services("up", "--cluster", "kafka", "2")

        t = threading.Thread(target=kill_and_restart, daemon=True)
        t.start()
        asyncio.run(gw.send_all(events, give_up_s=400))
        t.join(400)
        check_exactly_once(w, events, "a Kafka broker of three SIGKILLed mid-stream and restarted (RF 3, "
                           "min.insync.replicas 2)", f"{gw.retries} gateway retries")
    finally:
        w.kill()
        w.cleanup()
        services("up", "--cluster")
