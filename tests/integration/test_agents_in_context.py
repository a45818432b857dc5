"""An agent tested in-process with Faust's test_context: records in, the Redis state and
the topic sends out. Redis is the real one (127.0.0.1, a namespace of this test's own);
the Kafka sends are captured, since the test's app has no producer."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from streams import app as app_module
from streams.state import BalanceStore

pytestmark = pytest.mark.integration


class Sent:
    """What the agent sent, per topic: (key, value) pairs."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {}

    def capture(self, name: str) -> Any:
        async def send(key: bytes | None = None, value: bytes = b"", **_: Any) -> asyncio.Future[None]:
            self.by_topic.setdefault(name, []).append((key, value))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return send

    def values(self, name: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, v in self.by_topic.get(name, [])]


async def until(done: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the agent did not {what} within 10 s")


async def test_the_parking_agent_takes_an_entry_and_an_exit_and_dead_letters_a_bad_record(
        services: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.parking import track_parking

    rt = app_module.runtime
    monkeypatch.setattr(rt, "_started", False)  # started again below, on this test's store
    namespace = f"t-ctx-{uuid.uuid4().hex[:8]}"
    store = BalanceStore(rt.settings.redis_url, namespace)
    monkeypatch.setattr(rt, "balances", store)
    # This process holds no ClickHouse store: the parking role alone.
    monkeypatch.setattr(rt, "settings", rt.settings.model_copy(update={"roles": frozenset({"parking"})}))
    sent = Sent()
    for name in ("ledger_topic", "notifications_topic", "member_events_topic", "dead_letter_topic"):
        monkeypatch.setattr(getattr(app_module, name), "send", sent.capture(name))
    park = sorted(rt.rules.car_parks)[0]
    tag = uuid.uuid4().hex[:6]
    plate = f"沪A{tag[:5].upper()}"
    at = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))

    def event(kind: str, minutes: int) -> bytes:
        return orjson.dumps({"event_id": f"{kind}-{tag}", "type": kind, "plate": plate, "car_park": park,
                             "gate": "g1", "occurred_at": (at + dt.timedelta(minutes=minutes)).isoformat()})

    async def entered() -> bool:
        return bool((await store.redis.hgetall(store.parking_key(park, plate))).get("entry_event") == f"entry-{tag}")

    async def exited() -> bool:
        return bool(sent.by_topic.get("notifications_topic"))

    async def dead_lettered() -> bool:
        return bool(sent.by_topic.get("dead_letter_topic"))

    try:
        async with track_parking.test_context() as agent:
            # put() returns once the stream has the value; the agent applies it in its batch.
            await asyncio.wait_for(agent.put(event("entry", 0), value_serializer="raw"), 10)
            await until(entered, "record the entry")
            await asyncio.wait_for(agent.put(event("exit", 95), value_serializer="raw"), 10)
            await until(exited, "price the exit")
            await asyncio.wait_for(agent.put(b'{"event_id": "p-bad", "type": "exit"}', value_serializer="raw"), 10)
            await until(dead_lettered, "dead-letter a record without a gate")
        (row,) = [s for m in sent.values("ledger_topic") for s in m.get("parking", [])]
        assert (row["status"], row["minutes"], row["plate"], row["event_id"]) == ("closed", 95, plate, f"exit-{tag}")
        assert row["fee_fen"] > 0, "95 minutes, past the free ones, cost something"
        (notice,) = sent.values("notifications_topic")
        assert (notice["kind"], notice["due_fen"], notice["minutes"]) == ("parking_exit", row["due_fen"], 95)
        (dead,) = sent.values("dead_letter_topic")
        assert (dead["source"], dead["field"]) == ("parking", "gate")
    finally:
        async for key in store.redis.scan_iter(match=f"{namespace}:*", count=1000):
            await store.redis.delete(key)
        await store.close()
