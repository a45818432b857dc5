"""Envelopes (several events in one Kafka record) and the partition each one is sent to."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

import core_ext
from streams.ingress import Coalescer, pack_by_partition, partition_for, unpack_records

# Kafka's own test vectors for Utils.murmur2 (clients/.../UtilsTest.java): the Java
# producer puts a keyed record on toPositive(murmur2(key)) % partitions.
KAFKA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                 b"a-little-bit-longer-string": -1486304829,
                 b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}


def test_partitions_are_the_java_producers() -> None:
    for key, h in KAFKA_MURMUR2.items():
        for n in (1, 3, 4, 12, 64):
            assert partition_for(key, n) == (h & 0x7FFFFFFF) % n, (key, n)


def test_ten_thousand_members_land_where_keyed_records_land() -> None:
    rng = random.Random(7)
    ids = [f"m-{rng.getrandbits(40):010x}".encode() for _ in range(10_000)]
    producer_partitioner = DefaultPartitioner()
    for n in (4, 7):
        parts = list(range(n))
        assert [partition_for(k, n) for k in ids] == [producer_partitioner(k, parts, parts) for k in ids]
        assert len({partition_for(k, n) for k in ids}) == n


def test_envelopes_round_trip_and_a_corrupt_one_is_named() -> None:
    bodies = [orjson.dumps({"event_id": f"e{i}", "n": "é" * i}) for i in range(50)]
    env = core_ext.envelope_pack(bodies)
    assert env[:5] == b"\x00LYE\x01"
    assert core_ext.envelope_unpack(env) == bodies
    assert core_ext.envelope_unpack(bodies[0]) == [bodies[0]], "a single event is its own record"
    with pytest.raises(core_ext.InvalidEventError) as err:
        core_ext.envelope_unpack(env[:-3])
    assert err.value.field == "envelope" and "announced" in err.value.reason
    # The accrual decodes envelopes and single records alike, in order.
    batch = core_ext.EventBatch.decode([env, bodies[0]])
    assert len(batch) == 51


def test_a_compressed_envelope_unpacks_to_the_same_bodies() -> None:
    """Version 2 (the round outboxes in Redis; the outbox sweeper reads them here)."""
    rows = [orjson.dumps([{"event_id": f"e{i}", "member_id": "m-1", "kind": "earn", "points": i}]) for i in range(200)]
    env = core_ext.envelope_pack(rows, compressed=True)
    assert env[:5] == b"\x00LYE\x02"
    assert len(env) < len(core_ext.envelope_pack(rows)) // 3
    assert core_ext.envelope_unpack(env) == rows
    with pytest.raises(core_ext.InvalidEventError) as err:
        core_ext.envelope_unpack(env[:-5])
    assert err.value.field == "envelope" and "compressed envelope" in err.value.reason


def test_the_coalescer_shares_round_trips_and_keeps_order() -> None:
    calls: list[list[int]] = []

    async def run_many(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        c: Coalescer[int, int] = Coalescer(run_many)
        return list(await asyncio.gather(*(c(i) for i in range(100))))

    assert asyncio.run(main()) == [i * 10 for i in range(100)]
    assert sum(len(c) for c in calls) == 100 and len(calls) <= 2, "one round trip for concurrent callers"


def test_a_failed_round_trip_fails_its_callers_only() -> None:
    async def run_many(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        if 3 in items:
            raise ConnectionError("redis went away")
        return items

    async def main() -> list[object]:
        c: Coalescer[int, int] = Coalescer(run_many)
        first = await c(1)
        rest = await asyncio.gather(c(3), return_exceptions=True)
        return [first, *rest, await c(4)]

    got = asyncio.run(main())
    assert got[0] == 1 and isinstance(got[1], ConnectionError) and got[2] == 4


def test_pushes_are_packed_per_partition_in_order_and_unpacked_whole() -> None:
    rng = random.Random(11)
    pairs = [(f"m-{rng.randrange(300)}".encode(), orjson.dumps({"push_id": f"p{i}", "n": i})) for i in range(2_000)]
    packed = pack_by_partition(pairs, 4, max_events=100, max_bytes=2_000)
    by_partition: dict[int, list[bytes]] = {}
    for partition, key, record in packed:
        bodies = unpack_records([record])
        assert len(bodies) <= 100 and (len(bodies) == 1 or len(record) <= 2_000 + 9)  # + the 9-byte header
        assert partition == partition_for(key, 4)
        by_partition.setdefault(partition, []).extend(bodies)
    for partition, bodies in by_partition.items():  # every body once, in its key's partition, in order
        assert bodies == [b for k, b in pairs if partition_for(k, 4) == partition]
    assert sum(len(b) for b in by_partition.values()) == len(pairs)
    assert unpack_records([b"not an envelope", pairs[0][1]]) == [b"not an envelope", pairs[0][1]]
    single = pack_by_partition(pairs[:1], 4, 100, 2_000)
    assert single == [(partition_for(pairs[0][0], 4), pairs[0][0], pairs[0][1])]  # a group of one stays plain
