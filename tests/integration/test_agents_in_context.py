"""The agents tested in-process with Faust's test_context (parking, accrual, ledger,
notifier): records in, the Redis state and the topic sends out. Redis is the real one
(127.0.0.1, a namespace of this test's own); the Kafka sends are captured, since the test's app has no producer."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
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


def on_store(monkeypatch: pytest.MonkeyPatch, roles: set[str]) -> tuple[BalanceStore, Sent]:
    """The runtime on a store of this test's own namespace, with only `roles`, and every
    topic's sends captured."""
    rt = app_module.runtime
    monkeypatch.setattr(rt, "_started", False)
    store = BalanceStore(rt.settings.redis_url, f"t-ctx-{uuid.uuid4().hex[:8]}", members_per_call=64)
    monkeypatch.setattr(rt, "balances", store)
    monkeypatch.setattr(rt, "settings", rt.settings.model_copy(update={"roles": frozenset(roles)}))
    sent = Sent()
    for name in ("ledger_topic", "notifications_topic", "member_events_topic", "dead_letter_topic"):
        monkeypatch.setattr(getattr(app_module, name), "send", sent.capture(name))
    return store, sent


async def forget(store: BalanceStore) -> None:
    async for key in store.redis.scan_iter(match=f"{store.ns}:*", count=1000):
        await store.redis.delete(key)
    await store.close()


def payment(member: str, event_id: str, amount: int) -> dict[str, Any]:
    return {"event_id": event_id, "type": "payment", "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
            "member_id": member, "bu_id": "sh-mall", "merchant_id": "shop-7", "category": "fashion",
            "amount_fen": amount, "channel": "wechat"}


def ledger_rows(sent: Sent, member: str) -> list[dict[str, Any]]:
    """The member's points rows the agent sent (not the state rows that travel with them)."""
    return [r for m in sent.values("ledger_topic") for r in m.get("ledger", [])
            if r.get("member_id") == member and "table" not in r]


def state_rows(sent: Sent, member: str) -> list[dict[str, Any]]:
    """The member's state rows (member_states), one per write."""
    return [r for m in sent.values("ledger_topic") for r in m.get("ledger", [])
            if r.get("member_id") == member and r.get("table") == "member_states"]


async def test_the_accrual_agent_applies_a_payment_once_and_its_refund_takes_the_points_back(
        services: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import accrual
    from streams.metrics import counters

    store, sent = on_store(monkeypatch, {"accrual"})
    # The pushes' partition count, which the worker's producer would fetch from Kafka.
    monkeypatch.setitem(accrual._partitions._known, app_module.notifications_topic.get_topic_name(),
                        (4, time.monotonic()))
    tag = uuid.uuid4().hex[:8]
    member = f"m-{tag}"
    pay = payment(member, f"tx-{tag}", 52_300)
    refund = {**pay, "event_id": f"rf-{tag}", "type": "refund", "refund_of": f"tx-{tag}", "amount_fen": 52_300}

    async def balance() -> int:
        return (await store.member_state(member))[2]

    async def earned() -> bool:
        return await balance() > 0 and any(r["event_id"] == f"tx-{tag}" for r in ledger_rows(sent, member))

    duplicates_before = counters["events_duplicate_total"]

    async def duplicate_seen() -> bool:
        return counters["events_duplicate_total"] > duplicates_before

    async def refunded() -> bool:
        return any(r["event_id"] == f"rf-{tag}" for r in ledger_rows(sent, member))

    async def dead_lettered() -> bool:
        return bool(sent.by_topic.get("dead_letter_topic"))

    try:
        async with accrual.accrue_payments.test_context() as agent:
            await asyncio.wait_for(agent.put(orjson.dumps(pay), value_serializer="raw"), 10)
            await until(earned, "apply the payment and send its ledger rows")
            points = await balance()
            rows = ledger_rows(sent, member)
            assert sum(r["points"] for r in rows) == points, rows
            # The same payment again (a redelivery): counted as a duplicate, nothing earned twice.
            await asyncio.wait_for(agent.put(orjson.dumps(pay), value_serializer="raw"), 10)
            await until(duplicate_seen, "count the redelivered payment as a duplicate")
            assert await balance() == points
            await asyncio.wait_for(agent.put(orjson.dumps(refund), value_serializer="raw"), 10)
            await until(refunded, "apply the refund")
            await asyncio.wait_for(agent.put(b'{"event_id": "bad-1", "type": "payment"}', value_serializer="raw"), 10)
            await until(dead_lettered, "dead-letter a payment without its fields")
        assert await balance() == 0, "a full refund takes back every point the payment earned"
        rows = ledger_rows(sent, member)
        assert sum(r["points"] for r in rows if r["event_id"] == f"tx-{tag}") == points
        assert sum(r["points"] for r in rows if r["event_id"] == f"rf-{tag}") == -points
        (dead,) = sent.values("dead_letter_topic")
        assert dead["source"] == "accrual" and dead["event_id"] == "bad-1"
        record = await store.event_record(member, f"tx-{tag}")
        assert record, "the payment's record is kept for its refunds and redeliveries"
        # Each write sent the member's state with its rows: the last one is Redis's state.
        states = state_rows(sent, member)
        seq, state, _ = await store.member_state(member)
        assert [s["seq"] for s in states] == [1, 2] and states[-1]["seq"] == seq, states
        assert states[-1]["state"] == orjson.loads(state or "{}")
    finally:
        await forget(store)


class FakeClickHouse:
    """Stands in for the ClickHouse client (this is a test of the agent and the store's
    encoding, not of ClickHouse): records each RowBinary insert; fails the first `down`."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.inserts: list[tuple[str, int]] = []

    def raw_insert(self, table: str, columns: Any, insert_block: bytes, fmt: str, settings: Any) -> None:
        if self.down > 0:
            self.down -= 1
            raise ConnectionError("ClickHouse is restarting")
        self.inserts.append((table, len(insert_block)))


async def test_the_ledger_agent_retries_an_outage_dead_letters_poison_and_applies_board_scores(
        services: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.ledger import record_ledger
    from streams.metrics import counters
    from streams.retry import retrying as real_retrying

    store, sent = on_store(monkeypatch, {"ledger"})
    rt = app_module.runtime
    client = FakeClickHouse(down=2)
    monkeypatch.setattr(rt.ledger, "_client", client)
    monkeypatch.setattr(rt.ledger, "setup", _no_migrations)

    def quick(what: str, transient: Any, initial_s: float = 0.0, max_s: float = 0.0, **kw: Any) -> Any:
        return real_retrying(what, transient, initial_s=0.01, max_s=0.02, **kw)

    monkeypatch.setattr("agents.ledger.retrying", quick)
    tag = uuid.uuid4().hex[:8]
    member = f"m-{tag}"
    at_ms = int(time.time() * 1000)
    board = f"w:2026-W48:{tag}"
    row = {"event_id": f"tx-{tag}", "member_id": member, "kind": "earn", "points": 120, "amount_fen": 12_000,
           "bu_id": "sh-mall", "format": "mall", "merchant_id": "shop-7", "category": "fashion", "channel": "wechat",
           "occurred_at_ms": at_ms, "refund_of": "", "tier": "normal", "rules_version": "t",
           "processed_at_ms": at_ms, "explain": [], "lots": [], "batch_index": 0, "settlement": [],
           "boards": [[board, 120, 1]]}
    good = orjson.dumps({"ledger": [row], "guests": []})
    poison = b'{"ledger": [{"event_id": 7}], "guests": []}'
    retries_before = counters["ledger_write_retries_total"]
    written_before = counters["ledger_rows_written_total"]

    async def written() -> bool:
        return counters["ledger_rows_written_total"] > written_before

    try:
        async with record_ledger.test_context() as agent:
            await asyncio.wait_for(agent.put(poison, value_serializer="raw"), 10)
            await asyncio.wait_for(agent.put(good, value_serializer="raw"), 10)
            await until(written, "write the good message's rows")
        assert counters["ledger_write_retries_total"] - retries_before >= 2, "two failed inserts were retried"
        assert counters["ledger_rows_written_total"] - written_before == 1
        assert [t for t, _ in client.inserts].count("ledger") == 1
        assert await store.board_top(board, 3) == [(member, 120)], "the row's score reached its board"
        (dead,) = sent.values("dead_letter_topic")
        assert dead["source"] == "ledger" and "cannot be stored" in dead["reason"]
    finally:
        await forget(store)


async def _no_migrations() -> list[str]:
    return []


async def test_the_notifier_delivers_each_push_once_and_dead_letters_what_the_webhook_refuses(
        services: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.notifier import consume_pushes
    from devtools.workers import WebhookReceiver
    from streams.pushes import Webhook

    store, sent = on_store(monkeypatch, {"notifier"})
    receiver = WebhookReceiver("push-secret").start()
    webhook = Webhook(receiver.url, "push-secret", timeout_s=2.0, attempts=2, backoff_s=0.01)
    tag = uuid.uuid4().hex[:8]
    member = f"m-{tag}"

    async def notifier(stream: Any) -> None:
        await consume_pushes(stream, webhook, 50)

    agent_of = app_module.app.agent(app_module.notifications_topic, name=f"test-notifier-{tag}")(notifier)
    coupon = {"coupon_id": f"c-{tag}", "template": "t", "trigger": "spend", "coupon_kind": "discount",
              "valid_until_ms": 0}
    push = orjson.dumps({"type": "coupon_issued", "member_id": member, "push_id": f"p-{tag}", "coupon": coupon})
    notice = orjson.dumps({"type": "notice", "member_id": member, "kind": "expiry_reminder", "event_id": f"e-{tag}"})
    refused = orjson.dumps({"type": "notice", "member_id": member, "kind": "parking_exit", "event_id": f"x-{tag}"})

    async def delivered(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(receiver.received) >= n and bool(await store.pushed([f"p-{tag}"]) == [True])
        return check

    async def dead_lettered() -> bool:
        return bool(sent.by_topic.get("dead_letter_topic"))

    try:
        async with agent_of.test_context() as agent:
            for value in (push, push, notice):  # the push twice in one batch
                await asyncio.wait_for(agent.put(value, value_serializer="raw"), 10)
            await until(await delivered(2), "deliver the push and the notice")
            await asyncio.wait_for(agent.put(push, value_serializer="raw"), 10)  # redelivered later
            receiver.fail_status = 500
            await asyncio.wait_for(agent.put(refused, value_serializer="raw"), 10)
            await until(dead_lettered, "dead-letter the push the webhook refused")
        assert receiver.ids() == {f"p-{tag}": 1, f"notice:expiry_reminder:e-{tag}": 1}
        assert receiver.bad_signatures == 0
        (dead,) = sent.values("dead_letter_topic")
        assert dead["source"] == "notifier" and dead["event_id"] == f"notice:parking_exit:x-{tag}"
        history = [r for m in sent.values("ledger_topic") for r in m.get("coupons", [])]
        assert [(r["kind"], r["coupon_id"]) for r in history] == [("pushed", f"c-{tag}")]
    finally:
        receiver.stop()
        await forget(store)
