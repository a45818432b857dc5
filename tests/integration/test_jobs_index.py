"""The indexes that replace scans of the keyspace, on the real Redis: long jobs in progress
(streams/state/jobs.py), which the timers that take up a stalled audience send, campaign
run, merge or erasure read, so it must hold every job in progress and nothing else for
long; and the approvals, which the console's member page lists on every view."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from streams.settings import Settings
from streams.state import BalanceStore
from streams.state import jobs as jobs_module

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(services: None) -> AsyncIterator[BalanceStore]:
    s = BalanceStore(Settings.from_env().redis_url, f"t-jobs-{uuid.uuid4().hex[:8]}")
    await s.setup()
    yield s
    async for key in s.redis.scan_iter(match=f"{s.ns}:*", count=1000):
        await s.redis.delete(key)
    await s.close()


def ids(jobs: list[dict[str, object]], field: str) -> set[object]:
    return {j[field] for j in jobs}


async def test_a_job_is_indexed_while_in_progress_and_leaves_when_it_ends(store: BalanceStore) -> None:
    assert store.job_key("audience-send", "s-1") == store.audience_send_key("s-1")
    assert store.job_key("campaign-run", "c:2026-12-01") == store.campaign_run_key("c", "2026-12-01")
    assert store.job_key("merge", "mg-1") == store.merge_key("mg-1")
    assert store.job_key("erasure", "er-1") == store.erasure_key("er-1")
    with pytest.raises(ValueError, match="no kind of job 'nope'"):
        store.job_key("nope", "x")

    send = {"send_id": "s-1", "status": "sending", "done": 0}
    assert await store.save_job("audience-send", "s-1", send, create=True)
    assert not await store.save_job("audience-send", "s-1", send | {"done": 9}, create=True), "one record"
    assert ids(await store.open_jobs("audience-send"), "send_id") == {"s-1"}
    assert (await store.load_job("audience-send", "s-1"))["done"] == 0  # type: ignore[index]
    await store.save_job("audience-send", "s-1", send | {"status": "sent"})
    assert await store.open_jobs("audience-send") == []
    assert await store.redis.zcard(store.open_jobs_key("audience-send")) == 0, "an ended job leaves the index"
    assert (await store.load_job("audience-send", "s-1"))["status"] == "sent"  # type: ignore[index]

    # A merge is in progress while merging and again while undoing; erasures on their own index.
    merge = {"merge_id": "mg-1", "status": "merging"}
    await store.save_merge(merge)
    await store.save_erasure({"erasure_id": "er-1", "status": "erasing"})
    assert ids(await store.open_jobs("merge"), "merge_id") == {"mg-1"}
    await store.save_merge(merge | {"status": "merged"})
    assert await store.open_jobs("merge") == []
    await store.save_merge(merge | {"status": "undoing"})
    assert [j["status"] for j in await store.open_jobs("merge")] == ["undoing"]
    assert ids(await store.open_jobs("erasure"), "erasure_id") == {"er-1"}
    assert await store.redis.ttl(store.merge_key("mg-1")) > 60 * 86_400, "the record keeps its expiry"
    assert 29 * 86_400 < await store.redis.ttl(store.audience_send_key("s-1")) <= 30 * 86_400


async def test_every_kept_job_is_listed_last_saved_first(store: BalanceStore) -> None:
    for run in ("2026-11-29", "2026-11-30", "2026-12-01"):
        await store.save_job("campaign-run", f"win-back:{run}", {"campaign": "win-back", "run": run,
                                                                 "status": "sending"}, create=True)
    await store.save_job("campaign-run", "win-back-2:2026-12-01", {"campaign": "win-back-2", "run": "2026-12-01",
                                                                   "status": "sent"})
    await store.save_job("campaign-run", "win-back:2026-11-29", {"campaign": "win-back", "run": "2026-11-29",
                                                                 "status": "sent"})
    runs = await store.jobs("campaign-run", prefix="win-back:")
    assert [(r["run"], r["status"]) for r in runs] == [
        ("2026-11-29", "sent"), ("2026-12-01", "sending"), ("2026-11-30", "sending")]
    assert len(await store.jobs("campaign-run")) == 4
    assert {r["run"] for r in await store.open_jobs("campaign-run")} == {"2026-11-30", "2026-12-01"}
    # An index entry older than the kind's records are kept goes; so does a stale one whose
    # record is gone.
    index = store.jobs_key("campaign-run")
    now = int(time.time() * 1000)
    await store.redis.zadd(index, {"win-back:2026-11-30": now - jobs_module.KEEP_S["campaign-run"] * 1000 - 1})
    await store.redis.delete(store.campaign_run_key("win-back", "2026-12-01"))
    await store.redis.zadd(index, {"win-back:2026-12-01": now - jobs_module.STALE_ENTRY_MS - 1_000})
    assert [r["run"] for r in await store.jobs("campaign-run", prefix="win-back:")] == ["2026-11-29"]
    assert set(await store.redis.zrange(index, 0, -1)) == {"win-back:2026-11-29", "win-back-2:2026-12-01"}


async def test_jobs_saved_before_the_index_existed_are_found_once(store: BalanceStore) -> None:
    # Records written the old way (no index): the first read of a store indexes the open ones.
    for run, status in (("r1", "sending"), ("r2", "sent")):
        await store.redis.set(store.campaign_run_key("c", run), orjson.dumps(
            {"campaign": "c", "run": run, "status": status}))
    found = await store.open_jobs("campaign-run")
    assert [(j["campaign"], j["run"]) for j in found] == [("c", "r1")]
    assert await store.redis.zrange(store.open_jobs_key("campaign-run"), 0, -1) == ["c:r1"]
    # Later reads, of this process or another, take the index only: a record written the
    # old way now is not seen.
    await store.redis.set(store.campaign_run_key("c", "r3"), orjson.dumps(
        {"campaign": "c", "run": "r3", "status": "sending"}))
    assert [j["run"] for j in await store.open_jobs("campaign-run")] == ["r1"]
    other = BalanceStore(store.url, store.ns)
    await other.setup()
    try:
        assert [j["run"] for j in await other.open_jobs("campaign-run")] == ["r1"]
        assert await other.redis.smembers(store.jobs_indexed_key) == {"campaign-run"}
    finally:
        await other.close()


async def test_an_entry_whose_job_is_gone_is_dropped_only_when_stale(store: BalanceStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    index = store.open_jobs_key("erasure")
    await store.save_erasure({"erasure_id": "er-1", "status": "erasing"})
    await store.save_erasure({"erasure_id": "er-2", "status": "erasing"})
    await store.redis.delete(store.erasure_key("er-1"), store.erasure_key("er-2"))  # expired, say
    # Fresh entries stay (a save may be between its index entry and its record).
    assert await store.open_jobs("erasure") == []
    assert await store.redis.zcard(index) == 2
    # Once stale they go, unless saved open again after the reader looked.
    old = int(time.time() * 1000) - jobs_module.STALE_ENTRY_MS - 1_000
    await store.redis.zadd(index, {"er-1": old, "er-2": old})
    real_eval = store.redis.eval

    async def saved_again_meanwhile(script: str, numkeys: int, key: str, job_id: str, score: int) -> object:
        if job_id == "er-2":  # another worker saves er-2 open between the read and the drop
            await store.save_erasure({"erasure_id": "er-2", "status": "erasing"})
        return await real_eval(script, numkeys, key, job_id, score)

    monkeypatch.setattr(store.redis, "eval", saved_again_meanwhile)
    assert await store.open_jobs("erasure") == []
    assert await store.redis.zrange(index, 0, -1) == ["er-2"], "er-1 dropped; er-2 kept, saved open again"
    monkeypatch.setattr(store.redis, "eval", real_eval)
    assert ids(await store.open_jobs("erasure"), "erasure_id") == {"er-2"}


async def test_approvals_listed_through_their_index(store: BalanceStore) -> None:
    now = int(time.time() * 1000)
    # One saved before the index existed: found by the first listing (once per Redis).
    await store.redis.set(store.approval_key("ap-old"), orjson.dumps(
        {"approval_id": "ap-old", "member_id": "m-1", "status": "pending", "requested_at_ms": now - 5_000}))
    for n in (1, 2):
        stored = await store.add_approval({"approval_id": f"ap-{n}", "member_id": f"m-{n}", "status": "pending",
                                           "requested_at_ms": now + n})
        assert stored["approval_id"] == f"ap-{n}"
    again = await store.add_approval({"approval_id": "ap-1", "member_id": "m-9", "status": "pending",
                                      "requested_at_ms": now + 99})
    assert again["member_id"] == "m-1", "stored once, by id"
    assert [a["approval_id"] for a in await store.approvals()] == ["ap-2", "ap-1", "ap-old"]
    assert await store.redis.sismember(store.jobs_indexed_key, "approval")
    # A decision keeps it listed; an approval deleted (an erasure) leaves once its entry is
    # stale; one older than the records' 30 days leaves the index.
    assert (await store.decide_approval("ap-1", {"approval_id": "ap-1", "member_id": "m-1",
                                                 "status": "approved"}))[0]
    await store.redis.delete(store.approval_key("ap-2"), store.approval_key("ap-old"))
    await store.redis.zadd(store.approvals_index_key, {"ap-old": now - 61_000, "ap-ancient": now - 31 * 86_400_000})
    listed = await store.approvals()
    assert [(a["approval_id"], a["status"]) for a in listed] == [("ap-1", "approved")]
    assert await store.redis.zrange(store.approvals_index_key, 0, -1) == ["ap-1", "ap-2"], \
        "ap-2 was asked a moment ago (its record may be on its way); ap-old and ap-ancient dropped"


async def test_operators_listed_through_their_index(store: BalanceStore) -> None:
    from streams.operators import Operator

    # An account saved before the index existed is found by the first listing.
    await store.redis.set(store.operator_key("zz-old"), Operator("zz-old", "group_admin").to_json())
    assert await store.add_operator(Operator("cs-li", "customer_service"))
    assert not await store.add_operator(Operator("cs-li", "group_admin")), "the login exists already"
    await store.put_operator(Operator("bu-wang", "bu_admin", bu="sh-mall"))
    listed = await store.operators()
    assert [(o.login, o.role) for o in listed] == [("bu-wang", "bu_admin"), ("cs-li", "customer_service"),
                                                   ("zz-old", "group_admin")]
    assert await store.redis.smembers(store.operators_index_key) == {"bu-wang", "cs-li", "zz-old"}


async def test_a_send_s_members_are_written_once_beside_a_small_record(store: BalanceStore) -> None:
    members = [f"m-{n:06d}" for n in range(20_000)]
    send = {"send_id": "big", "status": "sending", "total": len(members), "done": 0}
    assert await store.save_job("audience-send", "big", send, create=True, members=members)
    assert not await store.save_job("audience-send", "big", send, create=True, members=["other"]), "one send"
    assert await store.job_members("audience-send", "big", dict(send)) == members, "the first members kept"
    for done in range(200, 2_001, 200):  # a page saved: the record only
        await store.save_job("audience-send", "big", send | {"done": done})
    assert await store.redis.strlen(store.job_key("audience-send", "big")) < 200
    assert 29 * 86_400 < await store.redis.ttl(store.job_members_key("audience-send", "big")) <= 30 * 86_400
    with pytest.raises(ValueError, match="own key"):
        await store.save_job("audience-send", "big", send | {"members": members})
    with pytest.raises(ValueError, match="has no members' list"):
        store.job_members_key("merge", "mg-1")
    # An erasure replaces a member by its pseudonym, keeping the expiry.
    await store.set_job_members("audience-send", "big", ["erased-1", *members[1:]])
    assert (await store.job_members("audience-send", "big", {}))[:2] == ["erased-1", "m-000001"]
    assert await store.redis.ttl(store.job_members_key("audience-send", "big")) > 29 * 86_400


async def test_a_run_saved_with_its_members_inside_has_them_moved_out(store: BalanceStore) -> None:
    # A record written before the members had a key of their own.
    old = {"campaign": "c", "run": "r1", "status": "sending", "done": 2, "members": ["a", "b", "c"]}
    await store.redis.set(store.campaign_run_key("c", "r1"), orjson.dumps(old), ex=3_600)
    [rec] = await store.open_jobs("campaign-run")
    assert await store.job_members("campaign-run", "c:r1", rec) == ["a", "b", "c"]
    assert "members" not in rec and rec["total"] == 3
    await store.save_job("campaign-run", "c:r1", rec | {"done": 3, "status": "sent"})
    stored = orjson.loads(await store.redis.get(store.campaign_run_key("c", "r1")))
    assert "members" not in stored and (stored["total"], stored["done"]) == (3, 3)
    assert await store.job_members("campaign-run", "c:r1", stored) == ["a", "b", "c"]
