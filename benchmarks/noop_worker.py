"""The Faust ceiling of the pipeline benchmark: an agent that does nothing with what it
reads (`stream.take`, raw serializer) but count records and the events their envelopes
hold, so the pipeline's rate can be set against what Faust itself drains of the same topic.

Run by benchmarks/test_pipeline_throughput.py as `python benchmarks/noop_worker.py` with
NOOP_TOPIC, NOOP_APP, NOOP_NS, LOYALTY_KAFKA_BOOTSTRAP, LOYALTY_REDIS_URL.
"""

from __future__ import annotations

import os

import faust
import redis.asyncio as aioredis

NS = os.environ["NOOP_NS"]
app = faust.App(os.environ["NOOP_APP"], broker=f"kafka://{os.environ['LOYALTY_KAFKA_BOOTSTRAP']}",
                store="memory://", web_enabled=False, consumer_auto_offset_reset="earliest",
                key_serializer="raw", value_serializer="raw", datadir=f"/tmp/{os.environ['NOOP_APP']}-data")
topic = app.topic(os.environ["NOOP_TOPIC"], key_serializer="raw", value_serializer="raw")
redis = aioredis.from_url(os.environ["LOYALTY_REDIS_URL"])


def events_in(record: bytes) -> int:
    """An envelope's count (docs/envelopes.md), or 1 for a single event."""
    return int.from_bytes(record[5:9], "big") if record[:4] == b"\x00LYE" else 1


@app.agent(topic)
async def noop(stream):  # type: ignore[no-untyped-def]
    async for records in stream.take(2000, within=0.05):
        pipe = redis.pipeline(transaction=False)
        pipe.incrby(f"{NS}:records", len(records))
        pipe.incrby(f"{NS}:events", sum(events_in(r) for r in records))
        await pipe.execute()


if __name__ == "__main__":
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
