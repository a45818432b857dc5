"""create_app(settings): an app built from one Settings object, not from the environment.
Its runtime talks to the real Redis (127.0.0.1) in a namespace of this test's own; its
topic sends are captured (the test's app is not started, so it has no producer)."""

from __future__ import annotations

import time
import uuid
import zlib

import orjson
import pytest
from pydantic import SecretStr

from streams.app import create_app
from streams.auth import pseudonymise_body
from streams.settings import Settings
from streams.state.keys import OUTBOX_INDEX_SHARDS
from tests.integration.test_agents_in_context import Sent

pytestmark = pytest.mark.integration


def built_app(tag: str, **update: object):  # type: ignore[no-untyped-def]
    settings = Settings.from_env().model_copy(update={"topic_prefix": f"t-{tag}", "app_id": f"t-{tag}",
                                                      "redis_namespace": f"t-{tag}",
                                                      "roles": frozenset({"parking"}), **update})
    return create_app(settings)


def test_the_app_takes_its_names_from_the_settings_given() -> None:
    built = built_app("names", partitions=3)
    assert built.topics.payments.get_topic_name() == "t-names.payments"
    assert built.topics.dead_letter.get_topic_name() == "t-names.dead-letter"
    assert sorted(t.get_topic_name() for t in built.topics.all()) == sorted(
        f"t-names.{n}" for n in ("payments", "ledger", "member-events", "parking", "coupon-pushes", "dead-letter"))
    assert built.topics.payments.partitions == 3 and built.topics.dead_letter.partitions == 1
    assert built.runtime.balances.ns == "t-names"
    assert built.app.conf.id == built.settings.group_id
    assert built.runtime.settings is built.settings


async def test_its_timers_work_send_due_schedules_and_orphaned_outboxes(services: None) -> None:
    tag = uuid.uuid4().hex[:8]
    built = built_app(tag)
    sent = Sent()
    built.topics.member_events.send = sent.capture("member_events")  # type: ignore[method-assign]
    built.topics.ledger.send = sent.capture("ledger")  # type: ignore[method-assign]
    store = (await built.runtime.started()).balances
    try:
        now = int(time.time() * 1000)
        await store.schedule(store.tier_reviews_key, {"m-1": now - 1000, "m-2": now + 3_600_000})
        assert await built.send_scheduled(store.tier_reviews_key, "tier_review") == 1
        (event,) = sent.values("member_events")
        assert event["type"] == "tier_review" and event["member_id"] == "m-1"
        assert event["event_id"] == f"tier_review-m-1-{now - 1000}"
        assert [m for m, _ in await store.due(store.tier_reviews_key, now + 7_200_000)] == ["m-2"]
        assert await built.send_scheduled(store.tier_reviews_key, "tier_review") == 0  # sent once

        # An HTTP write whose send died: its rows wait in the member's outbox, indexed.
        rows = orjson.dumps([{"member_id": "m-3", "event_id": "r-1", "kind": "redeem", "points": -5}]).decode()
        await store.redis.hset(store.outbox_key("m-3"), "r-1", rows)
        await store.redis.zadd(store.outbox_index_key(zlib.crc32(b"m-3") % OUTBOX_INDEX_SHARDS), {"m-3": now - 60_000})
        assert await built.flush_ledger_outbox() == 1
        assert len(sent.by_topic["ledger"]) == 1 and b"r-1" in sent.by_topic["ledger"][0][1]
        assert await store.redis.hgetall(store.outbox_key("m-3")) == {}
        assert await built.flush_ledger_outbox() == 0
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"t-{tag}:*")]
        if keys:
            await store.redis.delete(*keys)
        await store.close()


async def test_dead_letters_are_pseudonymised_with_the_key_of_the_settings_given() -> None:
    body = orjson.dumps({"event_id": "e-1", "payer": {"kind": "phone", "id": "13812345678"}})
    records = {}
    for key in ("key-one", "key-two"):
        built = built_app("dl", pii_key=SecretStr(key))
        sent = Sent()
        built.topics.dead_letter.send = sent.capture("dead_letter")  # type: ignore[method-assign]
        await built.send_dead_letter(source="test", reason="bad payer 13812345678", body=body, field="payer")
        ((event_id, value),) = sent.by_topic["dead_letter"]
        assert event_id == b"e-1" and b"13812345678" not in value
        records[key] = orjson.loads(value)
        assert records[key]["body"].encode() == pseudonymise_body(body, key)
    assert records["key-one"]["body"] != records["key-two"]["body"]
    assert records["key-one"]["reason"] == "bad payer 138****5678"
