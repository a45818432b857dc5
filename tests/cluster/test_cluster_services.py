"""The distributed services `scripts/services up --cluster` starts (issue 22): a Redis
Cluster of three primaries and three replicas, and three KRaft brokers whose topics are
replicated three times with min.insync.replicas 2, so a topic stays writable with acks=all
when a broker dies. Run by `scripts/test --cluster` (not by the default run: three more
JVMs and six Redis nodes)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from .conftest import run_services

pytestmark = pytest.mark.cluster

REDIS_PORTS = range(7101, 7107)
BROKERS = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"


services = run_services


@pytest.fixture(scope="module")
def cluster() -> None:
    services("up", "--cluster")


def test_up_is_idempotent_and_says_how_to_point_the_engine_at_it(cluster: None) -> None:
    again = services("up", "--cluster")
    assert "kafka bootstrap: " + BROKERS in again and "redis cluster: 127.0.0.1:7101..7106" in again
    status = services("status", "--cluster")
    assert status.count("running") == 9, status


def test_the_redis_cluster_has_three_primaries_each_with_a_replica(cluster: None) -> None:
    import redis

    node = redis.Redis(port=REDIS_PORTS[0], decode_responses=True)
    info = node.cluster("info")
    assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3 and int(info["cluster_known_nodes"]) == 6
    nodes = node.cluster("nodes")
    masters = [n for n in nodes.values() if "master" in n["flags"]]
    replicas = [n for n in nodes.values() if "slave" in n["flags"]]
    assert len(masters) == 3 and len(replicas) == 3
    assert {r["master_id"] for r in replicas} == {m["node_id"] for m in masters}
    for port in REDIS_PORTS:
        assert redis.Redis(port=port, decode_responses=True).config_get("appendonly")["appendonly"] == "yes"
    node.close()
    rc = redis.RedisCluster(host="127.0.0.1", port=REDIS_PORTS[0], decode_responses=True)
    key = f"t-cluster:{uuid.uuid4().hex}"
    rc.set(key, "1")
    assert rc.get(key) == "1"
    rc.delete(key)
    rc.close()


async def _topic_config(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    (res,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {c[0]: c[1] for c in res.resources[0][4]}


def test_three_brokers_replicate_every_topic_and_take_acks_all_writes_with_one_down(cluster: None) -> None:
    topic = f"t-cluster-{uuid.uuid4().hex[:8]}"

    async def check() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
        await admin.start()
        try:
            brokers = (await admin.describe_cluster())["brokers"]
            assert len(brokers) == 3
            producer = AIOKafkaProducer(bootstrap_servers=BROKERS, acks="all", enable_idempotence=True)
            await producer.start()
            try:
                await producer.send_and_wait(topic, b"first")  # auto-created with the brokers' defaults
                (described,) = await admin.describe_topics([topic])
                assert all(len(p["replicas"]) == 3 for p in described["partitions"]), described
                assert (await _topic_config(admin, topic))["min.insync.replicas"] == "2"
            finally:
                await producer.stop()
        finally:
            await admin.close()

    asyncio.run(check())
    services("down", "--cluster", "kafka", "3")
    try:
        async def write_with_one_down() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=BROKERS, acks="all", enable_idempotence=True,
                                        request_timeout_ms=30_000)
            await producer.start()
            try:
                for i in range(20):
                    await producer.send_and_wait(topic, f"m{i}".encode(), partition=i % 4)
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(bootstrap_servers=BROKERS, enable_auto_commit=False, group_id=None)
            await consumer.start()
            try:
                parts = [TopicPartition(topic, p) for p in range(4)]
                consumer.assign(parts)
                ends = await consumer.end_offsets(parts)
                assert sum(ends.values()) == 21
            finally:
                await consumer.stop()

        asyncio.run(write_with_one_down())
    finally:
        services("up", "--cluster")
