"""Each Redis Function of streams/state/functions.lua called directly on the real Redis
(127.0.0.1, keys of this test's own namespace): the member's sequence-checked step, budget
reservations and their settlement, leaderboard shards and guest facts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis

from streams.settings import Settings
from streams.state.base import FUNCTIONS_PATH

pytestmark = pytest.mark.integration


@pytest.fixture
def r(services: None) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(Settings.from_env().redis_url, decode_responses=True)
    client.function_load(FUNCTIONS_PATH.read_text(), replace=True)
    ns = f"t-fn-{uuid.uuid4().hex[:8]}"
    client.ns = ns  # type: ignore[attr-defined]
    yield client
    for key in client.scan_iter(match=f"{ns}:*", count=1000):
        client.delete(key)
    client.close()


def member_keys(ns: str, m: str) -> list[str]:
    return [f"{ns}:m:{{{m}}}", f"{ns}:ev:{{{m}}}", f"{ns}:ob:{{{m}}}", f"{ns}:h:{{{m}}}"]


def member_args(seq: int, mode: str, state: str, counters: list[int], records: Sequence[tuple[str, str]] = (),
                outbox: Sequence[tuple[str, str]] = (), history: Sequence[str] = ()) -> list[object]:
    return [seq, mode, state, *counters, 0, len(records), *[x for p in records for x in p], len(outbox),
            *[x for p in outbox for x in p], len(history), *history]


def test_ly_apply_writes_each_member_once_against_its_sequence(r: redis.Redis) -> None:
    ns = r.ns  # type: ignore[attr-defined]
    a, b = member_keys(ns, "m-a"), member_keys(ns, "m-b")
    head = [2, 20_000, 0, 86_400, 3]
    first = member_args(0, "d", '{"s":1}', [100, 100, 0, 1, 0], [("e1", "P|~|x")], [("e1", "[rows]")], ["h1"])
    wrong = member_args(5, "d", '{"s":9}', [999, 999, 0, 1, 0])
    assert r.fcall("ly_apply", 8, *a, *b, *head, *first, *wrong) == ["ok", "c:0"]
    m = r.hgetall(a[0])
    assert (m["seq"], m["state"], m["balance"], m["earned"], m["events"]) == ("1", '{"s":1}', "100", "100", "1")
    assert r.hget(a[1], "e1").startswith("P|") and "~" not in r.hget(a[1], "e1"), "the record is stamped"
    assert r.hget(a[2], "e1") == "[rows]" and r.lrange(a[3], 0, -1) == ["h1"]
    assert r.exists(b[0]) == 0, "a conflict writes nothing"
    # The same step again (a retry with the old sequence): refused, nothing counted twice.
    assert r.fcall("ly_apply", 4, *a, 1, 20_000, 0, 86_400, 3, *first) == ["c:1"]
    # Absolute values ("a"), then a debit as a delta ("d").
    assert r.fcall("ly_apply", 4, *a, 1, 20_000, 0, 86_400, 3,
                   *member_args(1, "a", '{"s":2}', [150, 160, 10, 2, 0])) == ["ok"]
    assert r.fcall("ly_apply", 4, *a, 1, 20_000, 0, 86_400, 3,
                   *member_args(2, "d", '{"s":3}', [-50, 0, 50, 1, 0], history=["h2", "h3", "h4"])) == ["ok"]
    m = r.hgetall(a[0])
    assert (m["seq"], m["balance"], m["earned"], m["debited"], m["events"]) == ("3", "100", "160", "60", "3")
    assert r.lrange(a[3], 0, -1) == ["h4", "h3", "h2"], "the history keeps the newest `history_len`"


def test_ly_reserve_and_ly_settle_never_overspend_and_are_idempotent(r: redis.Redis) -> None:
    key = f"{r.ns}:budget:{{camp-1}}"  # type: ignore[attr-defined]
    assert r.fcall("ly_reserve", 1, key, 1, 100, "e1", 60, "m-1", "e2", 50, "m-2") == [1, 0]
    assert r.hget(key, "spent") == "60", "the short reservation took nothing"
    assert r.fcall("ly_reserve", 1, key, 2, 100, "e1", 60, "m-1") == [1], "the same event again: no more taken"
    assert r.hget(key, "spent") == "60"
    assert r.fcall("ly_reserve", 1, key, 3, 100, "e2", 40, "m-2") == [1]
    assert r.fcall("ly_settle", 1, key, "e1", 1, "e2", 0, "e-unknown", 1) == 2
    assert r.hget(key, "spent") == "60", "e1 committed, e2 released"
    assert r.fcall("ly_settle", 1, key, "e1", 1, "e2", 0) == 0, "settled already: nothing"
    assert r.hget(key, "spent") == "60"
    unlimited = f"{r.ns}:budget:{{stock-1}}"  # type: ignore[attr-defined]
    assert r.fcall("ly_reserve", 1, unlimited, 1, -1, "e3", 10**9, "m-3") == [1]


def test_ly_board_takes_the_newest_version_of_each_score_once(r: redis.Redis) -> None:
    zset, versions = f"{r.ns}:lb:{{w#0}}", f"{r.ns}:lbv:{{w#0}}"  # type: ignore[attr-defined]
    assert r.fcall("ly_board", 2, zset, versions, 3600, "m-1", 120, 5, "m-2", 80, 1) == 2
    assert r.fcall("ly_board", 2, zset, versions, 3600, "m-1", 90, 4, "m-1", 120, 5) == 0, "older or the same"
    assert r.fcall("ly_board", 2, zset, versions, 3600, "m-2", 200, 2) == 1
    assert r.zrevrange(zset, 0, -1, withscores=True) == [("m-2", 200.0), ("m-1", 120.0)]
    assert 0 < r.ttl(zset) <= 3600 and 0 < r.ttl(versions) <= 3600


def test_ly_guest_keeps_a_guest_payment_once(r: redis.Redis) -> None:
    key = f"{r.ns}:guest:{{phone:p-1}}"  # type: ignore[attr-defined]
    assert r.fcall("ly_guest", 1, key, 600, "g1", '["payment",1]') == 1
    assert r.fcall("ly_guest", 1, key, 600, "g1", '["payment",1]') == 0  # the same payment again
    assert r.fcall("ly_guest", 1, key, 600, "g1", '["payment",2]') == 2  # another one under its id
    assert r.hgetall(key) == {"g1": '["payment",1]'} and 0 < r.ttl(key) <= 600
