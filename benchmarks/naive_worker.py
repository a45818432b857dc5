"""The naive baseline of the pipeline benchmark: a straightforward Faust agent that takes one
event at a time, decodes it with the standard library, computes its points in plain Python
(the reference's earning rate for the business unit, merchant and category) and applies it
with one Redis round trip (a Lua call: first time for this event id -> add to the balance).

Run by benchmarks/test_pipeline_throughput.py as `python benchmarks/naive_worker.py` with
NAIVE_TOPIC, NAIVE_APP, NAIVE_NS, LOYALTY_KAFKA_BOOTSTRAP, LOYALTY_REDIS_URL, LOYALTY_RULES.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import faust
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.reference import RefRules

APPLY = """
if redis.call('SET', KEYS[1], 1, 'NX') then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  redis.call('INCR', KEYS[3])
  return 1
end
redis.call('INCR', KEYS[3])
return 0
"""

RULES = RefRules(Path(os.environ["LOYALTY_RULES"]).read_text())
NS = os.environ["NAIVE_NS"]
app = faust.App(os.environ["NAIVE_APP"], broker=f"kafka://{os.environ['LOYALTY_KAFKA_BOOTSTRAP']}",
                store="memory://", web_enabled=False, consumer_auto_offset_reset="earliest",
                key_serializer="raw", value_serializer="raw", datadir=f"/tmp/{os.environ['NAIVE_APP']}-data")
topic = app.topic(os.environ["NAIVE_TOPIC"], key_serializer="raw", value_serializer="raw")
redis = aioredis.from_url(os.environ["LOYALTY_REDIS_URL"])
apply = redis.register_script(APPLY)


def points_of(ev: dict) -> int:  # type: ignore[type-arg]
    if "member_id" not in ev:
        return 0
    bu = RULES.bus.get(ev["bu_id"])
    if bu is None:
        return 0
    rate = RULES.base_rate(bu, ev["merchant_id"], ev["category"])
    if rate is None:
        return 0
    points = RULES.divide(ev["amount_fen"] * rate[0], rate[1])
    return points if ev["type"] == "payment" else -points


@app.agent(topic)
async def naive(stream):  # type: ignore[no-untyped-def]
    async for value in stream:
        ev = json.loads(value)
        member = ev.get("member_id") or "guest"
        await apply(keys=[f"{NS}:ev:{ev['event_id']}", f"{NS}:bal:{member}", f"{NS}:done"], args=[points_of(ev)])


if __name__ == "__main__":
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
