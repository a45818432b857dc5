"""Ceilings: what each part the pipeline is made of does alone on this machine, measured
the same way the pipeline uses it, so that a figure the pipeline misses can be laid at the
part that bounds it (benchmarks/README.md).

- Kafka: aiokafka `getmany` reading the same envelopes the pipeline drains (events/s), to
  set against the no-op Faust agent the pipeline benchmark measures;
- Redis: a minimal member write, one script call per member (a sequence check, a 300-byte
  state, one small record), sent through the accrual's raw channel in pipelines of 1,000;
- ClickHouse: raw RowBinary inserts of ledger-shaped rows into embedded chdb (rows/s).

Each checks its own result (events read, records and states written, rows counted). Run:
`scripts/bench ceilings`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import clickhouse_connect
import orjson
import redis
from aiokafka import AIOKafkaConsumer

import core_ext
from benchmarks.results import record
from benchmarks.test_pipeline_throughput import envelopes, make_events, preload
from devtools.workers import remove_run_data
from streams.settings import ROOT, Settings
from streams.state.resp import RawChannel

SLIM_WRITE = """#!lua name=ceiling
redis.register_function('ceiling_write', function(keys, args)
  local seq = redis.call('HGET', keys[1], 'seq') or '0'
  if seq ~= args[1] then return 0 end
  redis.call('HSET', keys[1], 'seq', tostring(tonumber(seq) + 1), 'state', args[2])
  redis.call('HSET', keys[2], args[3], args[4])
  return 1
end)
"""


def _cmd(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_kafka_getmany_ceiling(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), "up"], check=True)
    settings = Settings.from_env()
    topic = f"ceil-{uuid.uuid4().hex[:8]}.payments"
    events = make_events(200_000)
    packed = envelopes(events, 50)
    asyncio.run(preload(settings.kafka_bootstrap, topic, list(packed)))

    async def drain() -> tuple[int, float]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                    group_id=f"ceil-{uuid.uuid4().hex[:6]}", enable_auto_commit=False)
        await consumer.start()
        try:
            n, t0 = 0, None
            while n < len(events):
                for records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                    t0 = t0 or time.monotonic()
                    n += sum(int.from_bytes(r.value[5:9], "big") if r.value[:4] == b"\x00LYE" else 1 for r in records)
            return n, time.monotonic() - (t0 or time.monotonic())
        finally:
            await consumer.stop()

    try:
        n, took = asyncio.run(drain())
    finally:
        remove_run_data(settings.kafka_bootstrap, settings.redis_url, topic.split(".")[0])
    assert n == len(events)
    print(f"\nKafka: aiokafka getmany read {n:,} events in {len(packed):,} envelopes at {n / took:,.0f} events/s "
          f"({len(packed) / took:,.0f} records/s)")
    record(ceiling_kafka_getmany_eps=round(n / took))


def test_redis_slim_member_write_ceiling() -> None:
    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url)
    client.function_load(SLIM_WRITE, replace=True)
    ns = f"ceil-{uuid.uuid4().hex[:8]}"
    state = orjson.dumps({"tier": "silver", "lots": [[24322, 6301]], "qual": [[24322, 6099, 503153]],
                          "x": "y" * 180})
    n, members = 200_000, 20_000

    async def run() -> float:
        channel = RawChannel(settings.redis_url)
        try:
            t0 = time.monotonic()
            for start in range(0, n, 1_000):
                cmds = []
                for i in range(start, start + 1_000):
                    m = f"m{i % members}".encode()
                    seq = str(i // members).encode()
                    cmds.append(_cmd(b"FCALL", b"ceiling_write", b"2", b"%s:m:{%s}" % (ns.encode(), m),
                                     b"%s:ev:{%s}" % (ns.encode(), m), seq, state, b"e%d" % i,
                                     b"P|1795946775219|4f3a2b1c9d8e|74360|1487|0|0|0|0|sh-hotel|shop-01|spa|hotel"))
                replies = await channel.run(cmds)
                assert all(r == 1 for r in replies), "a write lost its sequence check"
            return time.monotonic() - t0
        finally:
            await channel.close()

    try:
        took = asyncio.run(run())
        assert int(client.hget(f"{ns}:m:{{m0}}", "seq")) == n // members
    finally:
        for key in client.scan_iter(f"{ns}:*", count=1000):
            client.delete(key)
        client.function_delete("ceiling")
    print(f"\nRedis: a minimal member write (sequence check, 300-byte state, one record), one script call "
          f"each, pipelines of 1,000: {n / took:,.0f} writes/s")
    record(ceiling_redis_member_writes_per_s=round(n / took))


def test_chdb_rowbinary_insert_ceiling(tmp_path: Path) -> None:
    """Ledger-shaped rows (the sink's own blocks, from the core) inserted raw into chdb."""
    path = tmp_path / "chdb"
    shutil.rmtree(path, ignore_errors=True)
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    from streams.sinks.ledger import migration_files, split_statements

    for f in migration_files():
        for statement in split_statements(f.read_text()):
            client.command(statement)
    rows = [{"event_id": f"e{i}", "member_id": f"m{i % 5000}", "kind": "earn", "points": 120, "amount_fen": 12000,
             "bu_id": "mall", "format": "mall", "merchant_id": "s", "category": "c", "channel": "wechat",
             "occurred_at_ms": 1_795_000_000_000 + i, "refund_of": "", "tier": "normal", "rules_version": "v",
             "processed_at_ms": 1_795_000_000_000 + i, "explain": [{"rule": "base", "points": 120}],
             "settlement": [{"account": "gateway", "amount_fen": -12000, "points": 0},
                            {"account": "merchant:s", "amount_fen": 11400, "points": 0},
                            {"account": "bu:mall", "amount_fen": 600, "points": 0}]} for i in range(100_000)]
    blocks = core_ext.ledger_blocks([orjson.dumps({"ledger": rows[i:i + 5000]}) for i in range(0, len(rows), 5000)])
    total = sum(tb.rows for tb in blocks.tables)
    t0 = time.monotonic()
    for tb in blocks.tables:
        client.raw_insert(tb.table, tb.columns, insert_block=tb.data, fmt="RowBinary")
    took = time.monotonic() - t0
    counted = client.query("SELECT count() FROM ledger").result_rows[0][0]
    client.close()
    assert counted == len(rows)
    print(f"\nClickHouse (chdb): raw RowBinary inserts of {total:,} ledger and settlement rows: {total / took:,.0f} "
          "rows/s")
    record(ceiling_chdb_rows_per_s=round(total / took))
