"""Members' events over the real services: 60 members sign up at once from four clients for
20 seats (exactly 20 seated, the others waitlisted in order, the seats budget exact); three
cancel and the first three waiting take their seats; who may come (tier); check-in at the
door with the engine's code (a forged one refused); after a short event, its no-show keeps
no seat, loses the points and is banned from signing up."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess, post_signed_many, redis_client
from streams.settings import ROOT
from tests.integration.test_engagement import now_iso
from tests.integration.test_mall import register

pytestmark = pytest.mark.integration

SEATS, CROWD = 20, 60


def iso(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def events_rules(path: Path) -> Path:
    path.write_text((ROOT / "rules" / "demo.toml").read_text() + f'''
[[member_events]]
id = "salon"
name = "Members' salon"
capacity = {SEATS}
points = 100
starts_at = "{iso(3600)}"
ends_at = "{iso(7200)}"

[[member_events]]
id = "gold-dinner"
capacity = 10
tiers = ["gold", "diamond"]
starts_at = "{iso(3600)}"
ends_at = "{iso(7200)}"

[[member_events]]
id = "quick"
name = "A quick talk"
capacity = 5
points = 50
starts_at = "{iso(90)}"
ends_at = "{iso(95)}"
no_show_ban_days = 30
''')
    return path


@pytest.fixture(scope="module")
def ew(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from tests.integration.conftest import new_worker

    tmp = tmp_path_factory.mktemp("events")
    w = new_worker(tmp, "events", LOYALTY_RULES=str(events_rules(tmp / "rules.toml")), LOYALTY_RATE_LIMIT_POS="100000")
    w.start()
    yield w
    w.stop()
    w.cleanup()


def funded(w: WorkerProcess, members: list[str]) -> None:
    """Registered, with a payment that earns enough points for a seat."""
    register(w, members)
    for m in members:
        ev = {"event_id": f"p-{m}", "type": "payment", "occurred_at": now_iso(), "member_id": m, "bu_id": "sh-mall",
              "merchant_id": "sh-mall-shop-01", "category": "fashion", "amount_fen": 50_000, "channel": "wechat"}
        assert w.send_callback(ev)[0] == 202
    w.wait_caught_up()


def act(w: WorkerProcess, event: str, what: str, member: str) -> tuple[int, Any]:
    body = orjson.dumps({"member_id": member})
    return w.post(f"/v1/events/{event}/{what}", body, {**w.pos_headers(body), "Idempotency-Key": uuid.uuid4().hex})


def signups(w: WorkerProcess, member: str) -> dict[str, dict[str, Any]]:
    return {s["event"]: s for s in w.get(f"/v1/members/{member}/events")[1]["signups"]}


def balance(w: WorkerProcess, member: str) -> int:
    return int(w.get(f"/v1/members/{member}")[1]["balance"])


def test_sixty_members_for_twenty_seats_at_once_then_the_waitlist_in_order(ew: WorkerProcess) -> None:
    crowd = [f"ev-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(CROWD)]
    funded(ew, crowd)
    before = {m: balance(ew, m) for m in crowd[:5]}
    reqs = [("/v1/events/salon/sign-ups", {"member_id": m}, f"su-{m}") for m in crowd]
    results: list[tuple[int, Any]] = [(0, None)] * len(reqs)

    def client(k: int) -> None:  # four clients, each with its own connections, all at once
        part = list(range(k, len(reqs), 4))
        got = asyncio.run(post_signed_many(ew, [reqs[i] for i in part], concurrency=16))
        for i, r in zip(part, got, strict=True):
            results[i] = r

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s for s, _ in results} == {201}, results[:3]
    seated = [crowd[i] for i, (_, b) in enumerate(results) if b["status"] == "registered"]
    waiting = [crowd[i] for i, (_, b) in enumerate(results) if b["status"] == "waitlisted"]
    assert (len(seated), len(waiting)) == (SEATS, CROWD - SEATS)
    r = redis_client(ew.redis_url)
    assert int(r.hget(f"{ew.run_id}:budget:{{event:salon}}", "spent")) == SEATS
    listed = ew.get("/v1/events?member_id=" + waiting[0])[1]["events"]
    salon = next(e for e in listed if e["event"] == "salon")
    assert (salon["seats_left"], salon["waiting"], salon["can_sign_up"]) == (0, CROWD - SEATS, False)
    for m in seated:
        if m in before:
            assert balance(ew, m) == before[m] - 100
    for m in waiting:
        if m in before:
            assert balance(ew, m) == before[m], "waiting costs nothing"
    # Three seated members cancel: their points come back, the first three waiting are seated.
    order = [m.decode() for m in r.zrange(f"{ew.run_id}:event-wait:salon", 0, -1)]
    assert sorted(order) == sorted(waiting)
    leaving = seated[:3]
    for m in leaving:
        status, body = act(ew, "salon", "cancellations", m)
        assert status == 201 and body["status"] == "cancelled" and body["points"] == 100, body
        assert act(ew, "salon", "cancellations", m)[0] == 409, "cancelled once"
    assert [signups(ew, m)["salon"]["status"] for m in order[:3]] == ["registered"] * 3
    assert [signups(ew, m)["salon"]["status"] for m in order[3:6]] == ["waitlisted"] * 3
    assert int(r.hget(f"{ew.run_id}:budget:{{event:salon}}", "spent")) == SEATS, "never more than the seats"
    # Redis lost the lists: `loyalty rebuild` puts them back, in the same order.
    wait_key, in_key = f"{ew.run_id}:event-wait:salon", f"{ew.run_id}:event-in:salon"
    lists = (r.zrange(wait_key, 0, -1, withscores=True), r.zrange(in_key, 0, -1, withscores=True))
    r.delete(wait_key, in_key)
    ew.wait_caught_up()
    status, page = ew.post("/v1/admin/rebuild", orjson.dumps({"offset": 0, "limit": 1000}),
                           {"Authorization": f"Bearer {ew.admin_token}"})
    assert status == 200, page
    assert (r.zrange(wait_key, 0, -1, withscores=True), r.zrange(in_key, 0, -1, withscores=True)) == lists
    assert r.ttl(wait_key) > 30 * 86_400
    # A newcomer now waits behind the list.
    late = f"ev-late-{uuid.uuid4().hex[:6]}"
    funded(ew, [late])
    assert act(ew, "salon", "sign-ups", late)[1]["status"] == "waitlisted"
    ew.wait_caught_up()
    rec = ew.get("/v1/admin/reconcile?kinds=1")[1]
    assert rec["clean"], rec
    budgets = next(k for k in rec["by_kind"]["kinds"] if k["kind"].startswith("budgets"))
    assert budgets["differ"] == 0, budgets


def test_who_may_come_and_check_in_with_the_engines_code(ew: WorkerProcess) -> None:
    m = f"ev-in-{uuid.uuid4().hex[:6]}"
    funded(ew, [m])
    status, body = act(ew, "gold-dinner", "sign-ups", m)
    assert status == 409 and body["field"] == "tier", body
    listed = {e["event"]: e for e in ew.get(f"/v1/events?member_id={m}")[1]["events"]}
    assert listed["gold-dinner"]["field"] == "tier" and listed["salon"]["can_sign_up"] in (True, False)
    assert act(ew, "quick", "sign-ups", m)[1]["status"] == "registered"
    code = signups(ew, m)["quick"]["check_in_code"]
    assert code.startswith(f"quick.{m}.")
    forged = code[:-4] + ("0000" if not code.endswith("0000") else "1111")
    for bad in (forged, code.replace("quick.", "salon.", 1), "nonsense"):
        body = orjson.dumps({"code": bad})
        status, answer = ew.post("/v1/events/quick/check-ins", body, ew.pos_headers(body))
        assert status == 400 and answer["field"] == "code", (bad, answer)
    body = orjson.dumps({"code": code})
    status, answer = ew.post("/v1/events/quick/check-ins", body, ew.pos_headers(body))
    assert status == 201 and answer["status"] == "attended", answer
    body = orjson.dumps({"code": code})
    assert ew.post("/v1/events/quick/check-ins", body, ew.pos_headers(body))[0] == 200, "scanned twice: one check-in"


def test_after_a_short_event_its_no_show_keeps_no_seat_loses_the_points_and_is_banned(ew: WorkerProcess) -> None:
    m = f"ev-ns-{uuid.uuid4().hex[:6]}"
    funded(ew, [m])
    start = balance(ew, m)
    status, body = act(ew, "quick", "sign-ups", m)
    assert status == 201 and body["status"] == "registered", body
    # The event ends within a minute of the module's start; the leader's round closes it.
    ew.wait_until(lambda: signups(ew, m)["quick"]["status"] == "no_show", 120, "the no-show recorded")
    assert balance(ew, m) == start - 50, "a no-show's points are kept"
    status, body = act(ew, "salon", "sign-ups", m)
    assert status == 409 and body["field"] == "no_show", body
    ew.wait_caught_up()
    rows = [r for r in ew.get(f"/v1/members/{m}/ledger")[1]["rows"] if r["kind"].startswith("event_")]
    assert sorted(r["kind"] for r in rows) == ["event_no_show", "event_signup"]
