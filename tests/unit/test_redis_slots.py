"""Every Redis function call and transaction names the keys of one hash slot (so the
engine runs on a Redis Cluster): the accrual plan the core builds, and the calls the
HTTP paths, the leaderboard consumer and the held refunds make."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

import core_ext
from streams.state import BOARD_SHARDS, BalanceStore

RULES = core_ext.RuleSet.from_toml("""
version = "slots"
[formats.mall]
points = 1
per_fen = 100
[[business_units]]
id = "mall"
format = "mall"
[[tiers]]
id = "normal"
multiplier_pct = 100
[[campaigns]]
id = "double"
multiplier_pct = 200
budget_points = 1000000
[[leaderboards]]
period = "week"
scope = "group"
""", "slots.toml")


def args_of(command: bytes) -> list[bytes]:
    """The arguments of one RESP command (an array of bulk strings)."""
    assert command.startswith(b"*")
    at = command.index(b"\r\n") + 2
    out = []
    while at < len(command):
        assert command[at:at + 1] == b"$"
        nl = command.index(b"\r\n", at)
        length = int(command[at + 1:nl])
        out.append(command[nl + 2:nl + 2 + length])
        at = nl + 2 + length + 2
    assert len(out) == int(command[1:command.index(b"\r\n")])
    return out


def keys_of(command: bytes) -> list[bytes]:
    a = args_of(command)
    if a[0] in (b"FCALL", b"FCALL_RO"):
        return a[3:3 + int(a[2])]
    return [a[1]]


def assert_one_slot(keys: list[Any]) -> None:
    slots = {key_slot(k if isinstance(k, bytes) else k.encode()) for k in keys}
    assert len(slots) == 1, keys


def pay(i: int, member: str) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "type": "payment", "occurred_at": "2026-11-28T10:00:00+08:00",
                         "member_id": member, "bu_id": "mall", "merchant_id": "s", "category": "c",
                         "amount_fen": 1000 + i, "channel": "wechat"})


def test_the_accrual_plan_names_one_slot_per_call() -> None:
    members = [f"member-{i}" for i in range(50)]
    records = [core_ext.envelope_pack([pay(i, members[i % 50]) for i in range(200)])]
    guest = orjson.dumps({"event_id": "g1", "type": "payment", "occurred_at": "2026-11-28T10:00:00+08:00",
                          "payer": {"kind": "wechat", "id": "o-1"}, "bu_id": "mall", "merchant_id": "s",
                          "category": "c", "amount_fen": 100, "channel": "wechat"})
    batch = core_ext.AccrualBatch(RULES, [*records, guest], "ly", 1_764_400_000_000, 400, 10)
    read = batch.read_plan()
    assert len(read) == 2 * 50 + 1
    for cmd in read:
        assert_one_slot(keys_of(cmd))
    empty = [[None] * (len(args_of(c)) - 2) for c in read[:100]]  # every HMGET: nothing stored yet
    batch.read_done([*empty, None])
    plans = [batch.reserve_plan()]
    batch.reserve_done([[1] * len(re.findall(rb"\r\n\$\d+\r\nmember-", c)) for c in plans[0]])
    plans.append(batch.outbox_plan("t0", 60))
    plans.append(batch.write_plan())
    batch.write_done([[b"ok"]] * len(plans[-1]))
    plans += [batch.settle_plan(), batch.guest_plan(86_400), batch.trim_plan()]
    assert [len(p) for p in plans] == [1, 2, 50, 1, 1, 2 + 3 * 50]
    for plan in plans:
        for cmd in plan:
            assert_one_slot(keys_of(cmd))
    assert batch.report().applied == 200


def test_the_python_side_names_one_slot_per_call() -> None:
    store = BalanceStore("redis://127.0.0.1:1/0", "ly")
    for m in ("m-1", "member:with:colons", "x" * 64):
        assert_one_slot([store.member_key(m), store.records_key(m), store.outbox_key(m), store.history_key(m),
                         store.held_refunds_key(m, "pay-1")])
    updates = [(board, f"m-{i}", i, i) for i in range(200) for board in ("w:2026-W48:all", "m:2026-11:bu:mall")]
    plan = store.board_plan(updates)
    assert len(plan) == 2 * BOARD_SHARDS
    for cmd in plan:
        assert_one_slot(keys_of(cmd))
    assert len({key_slot(keys_of(cmd)[0]) for cmd in plan}) > BOARD_SHARDS, "shards spread over slots"


class _Node:
    """A Redis that answers the set-up's questions as a cluster node (or not) would."""

    def __init__(self, cluster: bool) -> None:
        self.cluster = cluster

    async def ping(self) -> bool:
        return True

    async def function_load(self, code: str, replace: bool) -> str:
        return "loyalty"

    async def info(self, section: str) -> dict[str, Any]:
        assert section in ("cluster", "server")
        return {"cluster_enabled": int(self.cluster)} if section == "cluster" else {"run_id": "r-1"}

    async def config_get(self, pattern: str) -> dict[str, str]:
        return {}


@pytest.mark.parametrize(("cluster", "expected"), [(True, 1), (False, 64)])
async def test_several_members_per_apply_call_only_off_a_cluster(cluster: bool, expected: int) -> None:
    store = BalanceStore("redis://127.0.0.1:1/0", "ly", members_per_call=64)
    store.redis = _Node(cluster)  # type: ignore[assignment]

    async def use_cluster() -> None:  # the connection to the other nodes is not this test's
        store.cluster = True

    store._use_cluster = use_cluster  # type: ignore[method-assign]
    await store.setup()
    assert store.cluster is cluster
    assert store.members_per_call == expected
    members = [f"member-{i}" for i in range(100)]
    batch = core_ext.AccrualBatch(RULES, [core_ext.envelope_pack([pay(i, members[i]) for i in range(100)])],
                                  "ly", 1_764_400_000_000, 400, 10, store.members_per_call)
    read = batch.read_plan()
    batch.read_done([*([None] * (len(args_of(c)) - 2) for c in read[:200]), None])
    reserve = batch.reserve_plan()
    batch.reserve_done([[1] * len(re.findall(rb"\r\n\$\d+\r\nmember-", c)) for c in reserve])
    batch.outbox_plan("t1", 60)
    write = batch.write_plan()
    assert len(write) == -(-100 // expected)
    if cluster:
        for cmd in write:
            assert_one_slot(keys_of(cmd))
    batch.write_done([[b"ok"] * (len(keys_of(c)) // 4) for c in write])
    assert batch.report().applied == 100


def test_first_key_of_each_command_shape() -> None:
    from streams.state.cluster import first_key
    from streams.state.resp import pack

    assert first_key(pack("HMGET", "ly:m:{a}", "f1", "f2")) == b"ly:m:{a}"
    assert first_key(pack("FCALL", "ly_apply", 4, "ly:m:{a}", "ly:ev:{a}", "x", "y", "1")) == b"ly:m:{a}"
    assert first_key(pack("fcall_ro", "ly_read", 1, "k")) == b"k"
    with pytest.raises(ValueError, match="names no key"):
        first_key(pack("FCALL", "ly_tick", 0))
    with pytest.raises(ValueError, match="names no key"):
        first_key(pack("PING"))
    # the core's plan: the slot of the first key is the slot of every key of the command
    batch = core_ext.AccrualBatch(RULES, [pay(1, "m-1")], "ly", 1_764_400_000_000, 400, 10)
    for cmd in batch.read_plan():
        assert first_key(cmd) == keys_of(cmd)[0]
