"""Real-time marketing over the real services: each trigger kind issues its coupon and a
push reaches a real local webhook receiver (signed, with its push id); redemption at
the till; caps and budgets under a burst; no double issue or push across a SIGKILL;
a webhook that is down is retried and one that never answers is dead-lettered."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WebhookReceiver, WorkerProcess, read_dead_letters, send_callbacks
from streams.settings import Settings
from streams.signing import signed_headers
from tests.fixtures import rules_toml
from tests.integration.reliability import record

pytestmark = pytest.mark.integration
PUSH_SECRET = "push-secret-for-tests"

RULES = rules_toml("""
version = "mkt-1"
utc_offset_minutes = 480
""", "mall", "normal_tier", tail="""
[formats.hotel]
points = 1
per_fen = 100
[formats.parking]
points = 0
per_fen = 100
[[business_units]]
id = "hotel"
format = "hotel"
[[business_units]]
id = "park"
format = "parking"
[[tiers]]
id = "gold"
multiplier_pct = 100
qualify_points = 3000
[wallet]
validity_months = 2
reminder_days = 60
[[parking.car_parks]]
bu = "park"
free_minutes = 15
price_per_hour_fen = 1000
daily_cap_fen = 6000

[[coupon_templates]]
id = "welcome-20"
kind = "amount_off"
amount_off_fen = 2000
threshold_fen = 10000
valid_days = 30
bus = ["mall"]
categories = ["food"]
merchant_share_pct = 50

[[coupon_templates]]
id = "pct-10"
kind = "percent_off"
percent_off = 10
max_off_fen = 5000
valid_days = 14

[[coupon_templates]]
id = "coffee"
kind = "item"
item = "latte"
item_value_fen = 1800
valid_days = 30

[[coupon_templates]]
id = "park-2h"
kind = "parking"
parking_minutes = 120
valid_days = 1

[[coupon_templates]]
id = "flash"
kind = "amount_off"
amount_off_fen = 500
valid_days = 7
stock = 5

[[triggers]]
id = "welcome"
on = "register"
coupon = "welcome-20"

[[triggers]]
id = "birthday"
on = "birthday_month"
coupon = "coffee"
tags = ["vip"]

[[triggers]]
id = "try-hotel"
on = "first_format"
formats = ["hotel"]
coupon = "coffee"

[[triggers]]
id = "big-spender"
on = "spend"
min_amount_fen = 200000
coupon = "pct-10"
max_per_member = 1
per_days = 30

[[triggers]]
id = "weekly"
on = "spend_window"
min_total_fen = 150000
window_days = 7
coupon = "pct-10"

[[triggers]]
id = "gold"
on = "tier_upgrade"
to_tiers = ["gold"]
coupon = "pct-10"

[[triggers]]
id = "come-back"
on = "win_back"
dormant_days = 45
coupon = "coffee"

[[triggers]]
id = "after-parking"
on = "parking_exit"
coupon = "park-2h"

[[triggers]]
id = "expiring"
on = "points_expiring"
coupon = "coffee"
max_per_member = 1

[[triggers]]
id = "foodie-treat"
on = "spend"
min_amount_fen = 1
coupon = "coffee"
tags = ["foodie"]
max_per_member = 1

[[triggers]]
id = "flash-sale"
on = "spend"
min_amount_fen = 100
coupon = "flash"
tags = ["flash"]
max_per_member = 1
""")


@pytest.fixture(scope="module")
def rules_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("mkt") / "marketing.toml"
    p.write_text(RULES)
    return p


def env(rules_path: Path, receiver: WebhookReceiver, **extra: str) -> dict[str, str]:
    return {"LOYALTY_RULES": str(rules_path), "LOYALTY_PUSH_WEBHOOK_URL": receiver.url,
            "LOYALTY_PUSH_SECRET": PUSH_SECRET, "LOYALTY_PUSH_BACKOFF": "0.05", "LOYALTY_PUSH_TIMEOUT": "1",
            "LOYALTY_WALLET_CHECK_INTERVAL": "1", **extra}


@pytest.fixture(scope="module")
def mw(services: None, rules_path: Path, receiver: WebhookReceiver,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from tests.integration.conftest import new_worker

    w = new_worker(tmp_path_factory.mktemp("mw"), "marketing", **env(rules_path, receiver))
    w.start()
    yield w
    w.stop()


def iso(days_ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).astimezone(
        dt.timezone(dt.timedelta(hours=8))).isoformat(timespec="seconds")


def member_event(w: WorkerProcess, ev: dict[str, Any]) -> None:
    body = orjson.dumps(ev)
    assert w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))[0] == 202


def pay(w: WorkerProcess, m: str, amount: int, bu: str = "mall", category: str = "food", days_ago: float = 0,
        **extra: Any) -> str:
    ev = {"event_id": f"tx-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": iso(days_ago),
          "member_id": m, "bu_id": bu, "merchant_id": "s1", "category": category, "amount_fen": amount,
          "channel": "wechat", **extra}
    assert w.send_callback(ev)[0] == 202
    return str(ev["event_id"])


def coupons(w: WorkerProcess, m: str) -> list[dict[str, Any]]:
    status, body = w.get(f"/v1/members/{m}/coupons")
    assert status == 200, body
    return body["coupons"]  # type: ignore[no-any-return]


def wait_triggers(w: WorkerProcess, receiver: WebhookReceiver, m: str, want: set[str]) -> list[dict[str, Any]]:
    """Until the member's wallet holds coupons of exactly these triggers and each was pushed."""
    def done() -> bool:
        got = {c["trigger"] for c in coupons(w, m)}
        pushed = {p["coupon"]["trigger"] for p in receiver.pushes_for(m)}
        return got >= want and pushed >= want
    w.wait_until(done, timeout=60, what=f"coupons {sorted(want)} of {m} issued and pushed")
    return coupons(w, m)


def test_each_trigger_issues_a_coupon_and_pushes_it(mw: WorkerProcess, receiver: WebhookReceiver) -> None:
    m = f"m-{uuid.uuid4().hex[:8]}"
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    member_event(mw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": iso(), "member_id": m,
                      "birthday": f"1990-{today.month:02d}-01", "tags": ["vip"]})
    wait_triggers(mw, receiver, m, {"welcome", "birthday"})
    pay(mw, m, 5_000)  # first payment: mall, no "another format" yet
    pay(mw, m, 1_000, bu="hotel", category="room")
    wait_triggers(mw, receiver, m, {"try-hotel"})
    pay(mw, m, 300_000)  # one big payment: big-spender; the week's spend passes 1,500 yuan; gold
    wait_triggers(mw, receiver, m, {"big-spender", "weekly", "gold"})
    pay(mw, m, 300_000)  # big-spender again: capped at one per 30 days
    plate = "沪B" + uuid.uuid4().hex[:5].upper()
    body = orjson.dumps({"plate": plate})
    assert mw.post(f"/v1/members/{m}/plates", body, mw.pos_headers(body))[0] == 200
    for kind, minutes in (("entry", 90), ("exit", 0)):
        ev = orjson.dumps({"event_id": f"{kind}-{uuid.uuid4().hex[:8]}", "type": kind, "plate": plate,
                           "car_park": "park", "gate": "g1",
                           "occurred_at": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)).isoformat()})
        assert mw.post("/v1/callbacks/parking", ev, signed_headers(mw.callback_secret, ev))[0] == 202
        if kind == "entry":
            time.sleep(1.0)  # the exit must find the entry
    got = wait_triggers(mw, receiver, m, {"after-parking"})
    assert sum(1 for c in got if c["trigger"] == "big-spender") == 1
    # The next stay (3 hours) uses the 2-hour parking coupon at the exit.
    for kind, minutes in (("entry", 180), ("exit", 0)):
        ev = orjson.dumps({"event_id": f"{kind}-{uuid.uuid4().hex[:8]}", "type": kind, "plate": plate,
                           "car_park": "park", "gate": "g1",
                           "occurred_at": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)).isoformat()})
        assert mw.post("/v1/callbacks/parking", ev, signed_headers(mw.callback_secret, ev))[0] == 202
        if kind == "entry":
            time.sleep(1.0)
    mw.wait_until(lambda: [c["status"] for c in coupons(mw, m) if c["trigger"] == "after-parking"][-1:] == ["used"],
                  timeout=30, what="the parking coupon used at the exit")
    sessions_path = f"/v1/parking/sessions?plate={urllib.parse.quote(plate)}"
    mw.wait_until(lambda: any(d["rule"] == "coupon" for s in mw.get(sessions_path)[1]["sessions"]
                              for d in s["deductions"]), timeout=30, what="the coupon deduction")

    # Win-back: a member whose last payment was on the 1st of the month before last (59-92
    # days ago, whatever today is) pays again. Points earned then expire at the start of next
    # month (validity 2 months), within the 60-day reminder window and not yet expired:
    # points_expiring, via the wallet check. (A fixed "70 days ago" fell in the month three
    # months back early in a month: its lot had expired already.)
    d = f"m-{uuid.uuid4().hex[:8]}"
    local_now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    month_before_last = ((local_now.replace(day=1) - dt.timedelta(days=1)).replace(day=1) - dt.timedelta(days=1)) \
        .replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    pay(mw, d, 1_000, days_ago=(local_now - month_before_last).total_seconds() / 86_400)
    mw.wait_until(lambda: mw.get(f"/v1/members/{d}")[0] == 200, timeout=30, what="the old payment")
    pay(mw, d, 1_000)
    wait_triggers(mw, receiver, d, {"come-back", "expiring"})

    # Every push: signed (the receiver checked), its id the coupon id, the coupon's details.
    for member in (m, d):
        wallet = {c["coupon_id"]: c for c in coupons(mw, member)}
        for p in receiver.pushes_for(member):
            assert p["push_id"] == p["coupon"]["coupon_id"] and p["push_id"] in wallet
            assert p["coupon"]["template"] == wallet[p["push_id"]]["template"]
    assert receiver.bad_signatures == 0
    # ClickHouse has the history: issued and pushed rows for these coupons.
    def history() -> dict[str, int]:
        rows = mw.get("/v1/admin/coupons/totals", admin=True)[1]["rows"]
        out: Counter[str] = Counter()
        for r in rows:
            out[r["kind"]] += r["coupons"]
        return out
    mw.wait_until(lambda: history()["pushed"] >= len(coupons(mw, m)) + len(coupons(mw, d)), timeout=30,
                  what="pushed rows in ClickHouse")
    assert history()["issued"] >= history()["pushed"]


def test_redemption_at_the_till_validates_and_is_single_use(mw: WorkerProcess, receiver: WebhookReceiver) -> None:
    m, other = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    for x in (m, other):
        member_event(mw, {"event_id": f"reg-{x}", "type": "register", "occurred_at": iso(), "member_id": x})
        wait_triggers(mw, receiver, x, {"welcome"})
    (welcome,) = [c for c in coupons(mw, m) if c["trigger"] == "welcome"]
    cid = welcome["coupon_id"]

    def redeem(member: str, coupon: str, payment: str, amount: int = 9_000, bu: str = "mall",
               category: str = "food", days: float = 0) -> tuple[int, Any]:
        body = orjson.dumps({"member_id": member, "coupon_id": coupon, "payment_id": payment, "bu_id": bu,
                             "merchant_id": "s1", "category": category, "amount_fen": amount,
                             "occurred_at": iso(-days)})
        return mw.post("/v1/coupons/redeem", body, mw.pos_headers(body))

    table = [
        ("wrong owner", redeem(other, cid, "p-x"), 409, "not this member's"),
        ("below threshold", redeem(m, cid, "p-x", amount=7_999), 409, "needs a spend of 10000"),
        ("out of scope", redeem(m, cid, "p-x", bu="hotel"), 409, "not valid at"),
        ("expired", redeem(m, cid, "p-x", days=31), 409, "has expired"),
        ("bad body", redeem(m, cid, "p-x", amount=-5), 400, "amount_fen"),
    ]
    for name, (status, body), want_status, want in table:
        assert status == want_status, (name, body)
        assert want in body["error"], (name, body)
    status, body = redeem(m, cid, "p-1")
    assert (status, body["discount_fen"], body["status"]) == (201, 2_000, "used")
    assert redeem(m, cid, "p-1")[0] == 200  # the till's retry
    status, body = redeem(m, cid, "p-2")
    assert status == 409 and "used already" in body["error"]  # used twice
    (used,) = [c for c in coupons(mw, m) if c["coupon_id"] == cid]
    assert used["status"] == "used" and used["used_by"] == "p-1"
    # The till's payment callback names the coupon: redeemed for this very payment, so the
    # payment is applied and the coupon neither refused nor used again.
    ev = {"event_id": "p-1", "type": "payment", "occurred_at": iso(), "member_id": m, "bu_id": "mall",
          "merchant_id": "s1", "category": "food", "amount_fen": 9_000, "channel": "wechat", "coupon_ids": [cid]}
    assert mw.send_callback(ev)[0] == 202
    mw.wait_until(lambda: mw.get(f"/v1/members/{m}")[1]["events"] >= 2, timeout=30, what="the payment")
    movements = mw.get(f"/v1/members/{m}")[1]["recent_movements"]
    coupon_rows = [r["kind"] for r in movements if r.get("table") == "coupon_events" and r["event_id"] == "p-1"]
    assert coupon_rows == ["redeemed"]  # the endpoint's; the payment added no refusal, no second use


def test_coupon_ids_on_the_payment_callback_and_refund_returns_it(mw: WorkerProcess, receiver: WebhookReceiver) -> None:
    m = f"m-{uuid.uuid4().hex[:8]}"
    member_event(mw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": iso(), "member_id": m})
    (welcome,) = [c for c in wait_triggers(mw, receiver, m, {"welcome"}) if c["trigger"] == "welcome"]
    tx = pay(mw, m, 9_000, coupon_ids=[welcome["coupon_id"]])
    mw.wait_until(lambda: any(c["status"] == "used" for c in coupons(mw, m)), timeout=30, what="the redemption")
    pay(mw, m, 9_000, coupon_ids=[welcome["coupon_id"]])  # used twice: the payment counts, the coupon is refused
    mw.wait_until(lambda: mw.get(f"/v1/members/{m}")[1]["events"] >= 3, timeout=30, what="both payments")
    refund = {"event_id": f"rf-{tx}", "type": "refund", "occurred_at": iso(), "member_id": m, "bu_id": "mall",
              "merchant_id": "s1", "category": "food", "amount_fen": 9_000, "channel": "wechat", "refund_of": tx}
    assert mw.send_callback(refund)[0] == 202
    mw.wait_until(lambda: [c["status"] for c in coupons(mw, m) if c["trigger"] == "welcome"] == ["active"],
                  timeout=30, what="the refund to give the coupon back")

    def kinds() -> Counter[str]:
        rows = mw.get("/v1/admin/coupons/totals", admin=True)[1]["rows"]
        return Counter({r["kind"]: r["coupons"] for r in rows if r["template"] in ("welcome-20", "")})
    mw.wait_until(lambda: kinds()["returned"] >= 1 and kinds()["refused"] >= 1 and kinds()["redeemed"] >= 1,
                  timeout=30, what="redeemed, refused and returned rows in ClickHouse")


def test_caps_and_budget_hold_under_a_burst(mw: WorkerProcess, receiver: WebhookReceiver) -> None:
    """The flash template has a stock of 5 for the whole group; 30 tagged members pay at
    once, twice each: exactly 5 coupons, at most one per member."""
    members = [f"f-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    regs = [orjson.dumps({"event_id": f"reg-{x}", "type": "register", "occurred_at": iso(), "member_id": x,
                          "tags": ["flash"]}) for x in members]
    asyncio.run(send_callbacks(mw.base_url, mw.callback_secret, regs, 16, path="/v1/callbacks/member"))
    mw.wait_until(lambda: all(mw.get(f"/v1/members/{x}")[0] == 200 for x in members), timeout=60,
                  what="30 registrations")
    burst = [orjson.dumps({"event_id": f"fl-{x}-{k}", "type": "payment", "occurred_at": iso(), "member_id": x,
                           "bu_id": "mall", "merchant_id": "s1", "category": "food", "amount_fen": 1_000,
                           "channel": "wechat"}) for k in range(2) for x in members]
    asyncio.run(send_callbacks(mw.base_url, mw.callback_secret, burst, 32))
    mw.wait_until(lambda: all(mw.get(f"/v1/members/{x}")[1]["events"] >= 3 for x in members), timeout=60,
                  what="the burst")
    per_member = [sum(1 for c in coupons(mw, x) if c["template"] == "flash") for x in members]
    assert sum(per_member) == 5 and max(per_member) == 1


def test_segment_refresh_tags_members_and_a_trigger_uses_the_tag(mw: WorkerProcess, receiver: WebhookReceiver) -> None:
    """`loyalty segments refresh` computes tags in ClickHouse (foodie: >= 40% of spend in
    food); the member's state gets them, the API shows them, and a foodie-only trigger fires."""
    import os
    import subprocess
    import sys

    from streams.settings import ROOT

    foodie, other = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    for m in (foodie, other):
        member_event(mw, {"event_id": f"reg-{m}", "type": "register", "occurred_at": iso(), "member_id": m})
    for _ in range(3):
        pay(mw, foodie, 3_000, category="food", days_ago=1)
        pay(mw, other, 3_000, category="fashion", days_ago=1)
    mw.wait_until(lambda: all(mw.get(f"/v1/members/{m}")[1].get("events", 0) >= 4 for m in (foodie, other)),
                  timeout=30, what="the payments")
    mw.wait_until(lambda: mw.get("/v1/admin/ledger/totals", admin=True)[1]["events"]
                  >= mw.metrics()["events_applied_total"], timeout=30, what="the ledger in ClickHouse")
    env = {**os.environ, "LOYALTY_WEB_PORT": str(mw.port), "LOYALTY_ADMIN_TOKEN": mw.admin_token}
    out = subprocess.run([sys.executable, "-m", "streams.cli", "segments", "refresh", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = orjson.loads(out.stdout)
    assert report["members"] >= 2 and report["tags"].get("foodie", 0) >= 1
    mw.wait_until(lambda: "foodie" in mw.get(f"/v1/members/{foodie}")[1]["segment_tags"], timeout=30,
                  what="the foodie tag in the member's state")
    got = mw.get(f"/v1/members/{foodie}")[1]
    assert got["segment"] and "foodie" not in mw.get(f"/v1/members/{other}")[1]["segment_tags"]
    pay(mw, foodie, 1_000)
    pay(mw, other, 1_000, category="food")
    wait_triggers(mw, receiver, foodie, {"foodie-treat"})
    time.sleep(1.0)
    assert "foodie-treat" not in {c["trigger"] for c in coupons(mw, other)}


def test_webhook_down_then_up_is_retried_and_never_answering_is_dead_lettered(
        services: None, rules_path: Path, tmp_path: Path) -> None:
    from tests.integration.conftest import new_worker

    r = WebhookReceiver(PUSH_SECRET).start()
    r.fail_status = 503
    w = new_worker(tmp_path, "pushfail", **env(rules_path, r, LOYALTY_PUSH_ATTEMPTS="40"))
    w.start()
    try:
        ms = [f"m-{uuid.uuid4().hex[:8]}" for _ in range(30)]
        for m in ms:
            member_event(w, {"event_id": f"reg-{m}", "type": "register", "occurred_at": iso(), "member_id": m})
        w.wait_until(lambda: all(w.get(f"/v1/members/{m}")[0] == 200 for m in ms), timeout=30, what="registrations")
        time.sleep(1.5)  # the notifier is retrying against a receiver answering 503
        assert not any(r.pushes_for(m) for m in ms)
        r.fail_status = None
        w.wait_until(lambda: all(r.pushes_for(m) for m in ms), timeout=90, what="the pushes once the receiver is back")
        time.sleep(1.0)
        delivered = sum(len(r.pushes_for(m)) for m in ms)
        record("messaging webhook down (503) then up", len(ms), delivered, max(0, len(ms) - delivered),
               max(0, delivered - len(ms)), "welcome-coupon pushes; counted at the receiver")
        assert all(len(r.pushes_for(m)) == 1 for m in ms)
    finally:
        w.stop()
    # A receiver that never succeeds: after the attempts, the push is dead-lettered.
    r.fail_status = 500
    w2 = new_worker(tmp_path, "pushdead", **env(rules_path, r, LOYALTY_PUSH_ATTEMPTS="3"))
    w2.start()
    try:
        m = f"m-{uuid.uuid4().hex[:8]}"
        member_event(w2, {"event_id": f"reg-{m}", "type": "register", "occurred_at": iso(), "member_id": m})

        def dead() -> list[dict[str, Any]]:
            recs = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{w2.run_id}.dead-letter"))
            return [x for x in recs if x["source"] == "notifier" and m in (x.get("body") or "")]
        w2.wait_until(lambda: len(dead()) == 1, timeout=60, what="the push's dead letter")
        assert "after 3 attempts" in dead()[0]["reason"]
        assert w2.metrics()["pushes_failed_total"] == 1
    finally:
        w2.stop()
        r.stop()


def test_no_double_issue_or_push_across_sigkill(services: None, rules_path: Path, tmp_path: Path) -> None:
    from tests.integration.conftest import new_worker

    r = WebhookReceiver(PUSH_SECRET).start()
    w = new_worker(tmp_path, "mktcrash", **env(rules_path, r))
    members = [f"k-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    regs = [orjson.dumps({"event_id": f"reg-{x}", "type": "register", "occurred_at": iso(), "member_id": x})
            for x in members]
    pays = [orjson.dumps({"event_id": f"big-{x}", "type": "payment", "occurred_at": iso(), "member_id": x,
                          "bu_id": "mall", "merchant_id": "s1", "category": "food", "amount_fen": 300_000,
                          "channel": "wechat"}) for x in members]
    try:
        w.start()
        asyncio.run(send_callbacks(w.base_url, w.callback_secret, regs, 16, path="/v1/callbacks/member"))
        asyncio.run(send_callbacks(w.base_url, w.callback_secret, pays, 16))
        time.sleep(0.3)
        w.kill()  # mid-stream: some batches applied, some pushed, some neither
        # Requests the dead notifier had already written may still be read by the receiver
        # just after the kill returns: they count as sent before it.
        killed_at = time.time() + 0.5
        w.start()
        asyncio.run(send_callbacks(w.base_url, w.callback_secret, pays[:10], 8))  # gateway retries too

        def wallet_ids() -> set[str]:
            return {c["coupon_id"] for x in members for c in coupons(w, x)} if all(
                w.get(f"/v1/members/{x}")[0] == 200 for x in members) else set()
        # welcome + big-spender + weekly + gold for each member.
        w.wait_until(lambda: len(wallet_ids()) == 4 * len(members) and set(r.ids()) >= wallet_ids(), timeout=120,
                     what="every coupon issued once and pushed")
        issued = wallet_ids()
        assert set(r.ids()) == issued
        for x in members:
            per_trigger = Counter(c["trigger"] for c in coupons(w, x))
            assert per_trigger == {"welcome": 1, "big-spender": 1, "weekly": 1, "gold": 1}, (x, per_trigger)
        # A second delivery can only come from the moment between the receiver's 2xx and
        # the notifier remembering it (the kill): the receiver dedupes by X-Push-Id. So a
        # push arrives at most twice, and when twice, the first time before the kill (how
        # many depends on how many the notifier's batch had delivered when it was killed).
        with r.lock:
            arrivals: dict[str, list[float]] = {}
            for pid, _, at in r.received:
                arrivals.setdefault(pid, []).append(at)
        again = {pid: ts for pid, ts in arrivals.items() if len(ts) > 1}
        assert all(len(ts) == 2 and min(ts) < killed_at for ts in again.values()), again
        # And they are the batch that was in flight: the notifier delivers batch after batch
        # and remembers each when it is done, so no push delivered once only arrived among them.
        if again:
            window = min(min(ts) for ts in again.values())
            once_inside = [pid for pid, ts in arrivals.items() if len(ts) == 1 and window <= ts[0] < killed_at]
            assert not once_inside, (len(again), once_inside[:5])
    finally:
        w.stop()
        r.stop()


def test_redis_holds_only_keys_of_known_families_each_bounded(mw: WorkerProcess) -> None:
    """After this module's traffic: every key described in streams/state/keys.py, and each
    one of a family that grows per event or request carrying its expiry."""
    assert mw.keys_out_of_bounds() == []
