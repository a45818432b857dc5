"""Envelopes end to end over the real services: where they land, and the two crashes the
group commit adds: the worker dying with an envelope half applied, and the ingress dying
with envelopes in flight. Each ends with every event applied once and Redis = ledger."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import core_ext
from devtools.workers import WorkerProcess, remove_run_data
from streams.ingress import partition_for
from streams.settings import Settings
from streams.state import BalanceStore
from tests.integration.test_faults import Gateway, check_exactly_once, during, make_events

pytestmark = pytest.mark.integration


def test_envelopes_go_where_keyed_records_of_their_members_land(services: None) -> None:
    """10,000 member ids: the partition the ingress computes for an envelope is the one the
    broker gave a keyed single record of the same member."""
    settings = Settings.from_env()
    topic = f"t-partitions-{uuid.uuid4().hex[:8]}"
    rng = random.Random(11)
    keys = [f"m-{rng.getrandbits(48):012x}".encode() for _ in range(10_000)]

    async def landed() -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            assert len(await producer.partitions_for(topic)) == 6
            futures = [await producer.send(topic, key=k, value=b"{}") for k in keys]
            return [md.partition for md in await asyncio.gather(*futures)]
        finally:
            await producer.stop()

    try:
        assert asyncio.run(landed()) == [partition_for(k, 6) for k in keys]
    finally:
        remove_run_data(settings.kafka_bootstrap, settings.redis_url, topic)


def _envelopes(events: list[dict[str, Any]], partitions: int, size: int) -> list[tuple[bytes, int, bytes]]:
    """The events packed per partition of their member, in order: (key, partition, envelope)."""
    lanes: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        lanes.setdefault(partition_for(e["member_id"].encode(), partitions), []).append(e)
    out = []
    for p, evs in lanes.items():
        for i in range(0, len(evs), size):
            chunk = evs[i:i + size]
            out.append((chunk[0]["member_id"].encode(), p, core_ext.envelope_pack([orjson.dumps(e) for e in chunk])))
    return out


async def _produce_envelopes(topic: str, items: list[tuple[bytes, int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=Settings.from_env().kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, partition, value in items:
            await producer.send_and_wait(topic, key=key, value=value, partition=partition)
    finally:
        await producer.stop()


def test_worker_dying_with_an_envelope_half_applied_loses_and_doubles_nothing(worker_factory: Any,
                                                                              tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    # Members written two to a call: the batch's writes are several calls, so one can die
    # between them (a call is atomic in Redis, whatever its members).
    w: WorkerProcess = worker_factory("half", LOYALTY_BATCH_SIZE="1", LOYALTY_FAULTS_DIR=str(faults),
                                      LOYALTY_REDIS_MEMBERS_PER_CALL="2")
    w.start()
    tag = f"hv-{uuid.uuid4().hex[:6]}"
    events = make_events(1_200, tag)
    refunds = [{**e, "event_id": e["event_id"] + "-rf", "type": "refund", "refund_of": e["event_id"],
                "amount_fen": e["amount_fen"] // 2} for e in events[::10]]
    stream = events + refunds
    envelopes = _envelopes(stream, 4, 300)
    (faults / "accrual-die-mid-write").touch()  # the first batch with several members dies half written
    asyncio.run(_produce_envelopes(f"{w.run_id}.payments", envelopes))
    deadline = time.monotonic() + 60
    while w.proc is not None and w.proc.poll() is None:
        assert time.monotonic() < deadline, "the fault should have stopped the worker"
        time.sleep(0.1)
    assert w.proc is not None and w.proc.returncode == 137
    # One envelope is now half applied: some of its events have records, the others not.
    store = BalanceStore(Settings.from_env().redis_url, w.run_id)
    r = redis.Redis.from_url(Settings.from_env().redis_url, decode_responses=True)
    partial = 0
    for _key, _p, env in envelopes:
        bodies = [orjson.loads(b) for b in core_ext.envelope_unpack(env)]
        done = sum(1 for e in bodies if r.hexists(store.records_key(e["member_id"]), e["event_id"]))
        partial += 0 < done < len(bodies)
    assert partial >= 1, "the worker should have died with an envelope half applied"
    w.start()
    check_exactly_once(w, stream, "worker died with an envelope half applied",
                       f"{len(envelopes)} envelopes of up to 300 events")


def test_ingress_killed_with_envelopes_in_flight(worker_factory: Any) -> None:
    """SIGKILL of the process that answers callbacks while envelopes are in flight: every
    callback that got 202 is applied; those that got no answer are sent again by the
    gateway and counted once."""
    w: WorkerProcess = worker_factory("ingress-kill", LOYALTY_ENVELOPE_LINGER_MS="5")
    w.start()
    events = make_events(2_500, f"ik-{uuid.uuid4().hex[:6]}")
    gw = Gateway(w)
    kills = {"n": 0}

    def kill_and_restart() -> None:
        w.kill()
        kills["n"] += 1
        w.start()

    t = during(gw, 600, kill_and_restart)
    asyncio.run(gw.send_all(events, concurrency=64, give_up_s=300))
    t.join(120)
    assert kills["n"] == 1 and gw.retries > 0, "the kill should have cut callbacks off"
    check_exactly_once(w, events, "ingress SIGKILLed with envelopes in flight",
                       f"{gw.retries} gateway retries after the kill")
