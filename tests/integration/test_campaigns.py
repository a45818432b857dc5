"""Scheduled campaigns over the real services, with a clock the test moves
(LOYALTY_CLOCK_FILE): a dormant member gets the win-back once on the day it is due and not
again; the birthday run on the 1st; the frequency cap across two campaigns and a trigger; a
run interrupted by SIGKILL and resumed reaches each member exactly once; the campaigns'
KPIs. Every campaign's audience names a tag of its own test, so the runs do not meet."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WebhookReceiver, WorkerProcess, send_callbacks
from streams.settings import ROOT
from streams.signing import signed_headers
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration
PUSH_SECRET = "push-secret-for-campaigns"
TZ = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime.now(TZ)
#: The daily campaigns' time: two hours from now, so that payments "at" it pass the ingress's
#: one-day window for times ahead.
BASE = (NOW + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
HM = BASE.strftime("%H:%M")
#: The first 1st of a month at least three days after BASE, 09:00.
_first = (BASE + dt.timedelta(days=3)).replace(day=1, hour=9, minute=0)
FIRST = _first if _first > BASE + dt.timedelta(days=3) else (_first + dt.timedelta(days=32)).replace(day=1)
BULK_AT = FIRST + dt.timedelta(days=2, hours=3)
BULK = 400

RULES = rules_toml("""
version = "sched-1"
utc_offset_minutes = 480
""", "mall", "normal_tier", tail=f"""
[wallet]
validity_months = 12

[frequency_cap]
pushes = 2
days = 7

[[coupon_templates]]
id = "winback"
kind = "amount_off"
amount_off_fen = 2000
valid_days = 30

[[coupon_templates]]
id = "gift"
kind = "item"
item = "cake"
item_value_fen = 3800
valid_days = 31

[[coupon_templates]]
id = "pct-10"
kind = "percent_off"
percent_off = 10
max_off_fen = 5000
valid_days = 14

[[triggers]]
id = "big-spender"
on = "spend"
min_amount_fen = 100000
coupon = "pct-10"

[audiences.dormant-wb]
dormant_days = 90
tags = ["wb"]

[[scheduled_campaigns]]
id = "win-back"
name = "Dormant 90 days: 20 yuan off"
every = "day"
at = "{HM}"
coupon = "winback"
audience_id = "dormant-wb"

[[scheduled_campaigns]]
id = "birthday"
every = "month"
day = 1
at = "09:00"
coupon = "gift"
audience = {{ birthday_month = true, tags = ["bd"] }}

[[scheduled_campaigns]]
id = "cap-a"
every = "day"
at = "{HM}"
coupon = "winback"
audience = {{ tags = ["cap"] }}

[[scheduled_campaigns]]
id = "cap-b"
every = "day"
at = "{HM}"
notice = "Double points this weekend"
audience = {{ tags = ["cap"] }}

[[scheduled_campaigns]]
id = "double-day"
every = "once"
at = "{(BASE + dt.timedelta(minutes=10)).isoformat()}"
notice = "Double points for you today"
capped = false
audience = {{ tags = ["dbl"] }}

[[campaigns]]
id = "double-for-reached"
multiplier_pct = 200
dates = ["{BASE.date().isoformat()}"]
enrolled_by = "double-day"

[[scheduled_campaigns]]
id = "bulk"
every = "once"
at = "{BULK_AT.isoformat()}"
coupon = "gift"
capped = false
audience = {{ tags = ["bulk"] }}
""")


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clock") / "now"


def set_clock(path: Path, at: dt.datetime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(at.isoformat())
    tmp.replace(path)


@pytest.fixture(scope="module")
def cw(services: None, receiver: WebhookReceiver, clock_file: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from tests.integration.conftest import new_worker

    rules = tmp_path_factory.mktemp("sched") / "campaigns.toml"
    rules.write_text(RULES)
    set_clock(clock_file, BASE - dt.timedelta(minutes=1))
    w = new_worker(tmp_path_factory.mktemp("cw"), "campaigns", LOYALTY_RULES=str(rules),
                   LOYALTY_PUSH_WEBHOOK_URL=receiver.url, LOYALTY_PUSH_SECRET=PUSH_SECRET,
                   LOYALTY_CLOCK_FILE=str(clock_file), LOYALTY_SCHEDULE_INTERVAL="0.5",
                   LOYALTY_SCHEDULE_STALE="3", LOYALTY_AUDIENCE_SEND_RATE="100")
    w.start()
    yield w
    w.stop()


def register(w: WorkerProcess, m: str, tags: list[str], birthday: str | None = None) -> bytes:
    ev: dict[str, Any] = {"event_id": f"reg-{m}", "type": "register", "occurred_at": NOW.isoformat(),
                          "member_id": m, "tags": tags}
    if birthday:
        ev["birthday"] = birthday
    return orjson.dumps(ev)


def member_events(w: WorkerProcess, bodies: list[bytes]) -> None:
    asyncio.run(send_callbacks(w.base_url, w.callback_secret, bodies, 16, path="/v1/callbacks/member"))


def pay(w: WorkerProcess, m: str, amount: int, at: dt.datetime) -> None:
    ev = {"event_id": f"tx-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": at.isoformat(),
          "member_id": m, "bu_id": "mall", "merchant_id": "s1", "category": "food", "amount_fen": amount,
          "channel": "wechat"}
    assert w.send_callback(ev)[0] == 202


def triggers(w: WorkerProcess, m: str) -> Counter[str]:
    status, body = w.get(f"/v1/members/{m}/coupons")
    assert status == 200, body
    return Counter(c["trigger"].split(":")[1] if c["trigger"].startswith("campaign:") else c["trigger"]
                   for c in body["coupons"])


def runs(w: WorkerProcess, campaign: str) -> list[dict[str, Any]]:
    status, body = w.get("/v1/admin/campaigns")
    assert status == 200, body
    return next(c for c in body["campaigns"] if c["id"] == campaign)["runs"]  # type: ignore[no-any-return]


def wait_sent(w: WorkerProcess, campaign: str, count: int) -> list[dict[str, Any]]:
    """Until the campaign has `count` runs, all sent, and their pushes applied."""
    w.wait_until(lambda: len(rs := runs(w, campaign)) == count and all(r["status"] == "sent" for r in rs),
                 timeout=90, what=f"{count} runs of {campaign} sent")
    w.wait_caught_up()
    return runs(w, campaign)


def test_runs_wait_for_their_time_then_reach_their_audience_once(cw: WorkerProcess,
                                                                  receiver: WebhookReceiver, clock_file: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    dormant, active, capped, control = (f"{x}-{tag}" for x in ("wb-old", "wb-new", "cap-f", "cap-g"))
    member_events(cw, [register(cw, dormant, ["wb"]), register(cw, active, ["wb"]), register(cw, capped, ["cap"]),
                       register(cw, control, ["cap"])])
    pay(cw, dormant, 5_000, NOW - dt.timedelta(days=95))
    pay(cw, active, 5_000, NOW - dt.timedelta(days=10))
    cw.wait_caught_up()
    # A minute before its time: yesterday's run is past the grace, today's still to come
    # (four rounds of the scheduler go by).
    time.sleep(2)
    assert runs(cw, "win-back") == [] and runs(cw, "cap-a") == []
    set_clock(clock_file, BASE + dt.timedelta(seconds=30))
    run_id = BASE.strftime("%Y%m%d%H%M")
    (wb,) = wait_sent(cw, "win-back", 1)
    assert (wb["run"], wb["total"], wb["done"]) == (run_id, 1, 1), wb
    assert triggers(cw, dormant)["win-back"] == 1 and triggers(cw, active)["win-back"] == 0
    for m in (capped, control):
        assert triggers(cw, m)["cap-a"] == 1
    cw.wait_until(lambda: all(
        {p.get("kind") or p.get("type") for p in receiver.pushes_for(m, "")} >= {"campaign_notice", "coupon_issued"}
        for m in (capped, control)), timeout=60, what="the coupon and the notice pushed to both")
    notice = next(p for p in receiver.pushes_for(capped, "") if p.get("kind") == "campaign_notice")
    assert notice["message"] == "Double points this weekend" and notice["run"] == run_id
    # The same day again: the run is not run twice.
    set_clock(clock_file, BASE + dt.timedelta(minutes=5))
    time.sleep(1.5)
    assert len(runs(cw, "win-back")) == 1

    # The frequency cap (2 a week): both members were pushed twice; a big payment's trigger
    # is held for them, and not for a member the campaigns did not reach.
    other = f"big-{tag}"
    member_events(cw, [register(cw, other, [])])
    for m in (capped, other):
        pay(cw, m, 200_000, BASE + dt.timedelta(minutes=5))
    cw.wait_caught_up()
    assert triggers(cw, other)["big-spender"] == 1
    assert triggers(cw, capped)["big-spender"] == 0, "the cap holds the trigger's coupon"

    # A campaign window for an audience: the members the "double-day" run reached earn double
    # points that day; another member paying the same does not.
    reached, unreached = f"dbl-{tag}", f"plain-{tag}"
    member_events(cw, [register(cw, reached, ["dbl"]), register(cw, unreached, [])])
    cw.wait_caught_up()
    set_clock(clock_file, BASE + dt.timedelta(minutes=10, seconds=30))
    wait_sent(cw, "double-day", 1)
    before = {m: cw.get(f"/v1/members/{m}")[1]["balance"] for m in (reached, unreached)}
    for m in (reached, unreached):
        pay(cw, m, 10_000, BASE + dt.timedelta(minutes=15))
    cw.wait_caught_up()
    earned = {m: cw.get(f"/v1/members/{m}")[1]["balance"] - before[m] for m in (reached, unreached)}
    assert earned[reached] == 2 * earned[unreached] > 0, earned

    # The next day's run: the dormant member was won back once this dormancy, not again.
    set_clock(clock_file, BASE + dt.timedelta(days=1, seconds=30))
    assert [r["run"] for r in wait_sent(cw, "win-back", 2)] == [(BASE + dt.timedelta(days=1)).strftime("%Y%m%d%H%M"),
                                                                   run_id]
    assert triggers(cw, dormant)["win-back"] == 1
    status, ledger = cw.get(f"/v1/members/{dormant}/ledger")
    assert status == 200
    why = [p["id"] for row in ledger["rows"] if row["kind"] == "campaign_push" for p in row["explain"]]
    assert sorted(why) == sorted([f"win-back:{run_id}",
                                  f"win-back:{(BASE + dt.timedelta(days=1)).strftime('%Y%m%d%H%M')}"
                                  ":reached_this_dormancy"]), why
    status, kpis = cw.get(f"/v1/admin/kpis?kpi=scheduled_campaigns&from={NOW.date()}"
                          f"&to={(BASE + dt.timedelta(days=2)).date()}")
    assert status == 200, kpis
    by = {r["campaign"]: r for r in kpis["kpis"]["scheduled_campaigns"]}
    assert (by["win-back"]["runs"], by["win-back"]["reached"], by["win-back"]["pushed"],
            by["win-back"]["held"]) == (2, 1, 1, 1), by["win-back"]
    # The second day the members pushed twice this week are held: cap-a's coupon too.
    assert (by["cap-a"]["pushed"], by["cap-a"]["issued"], by["cap-a"]["capped"]) == (2, 2, 2), by["cap-a"]
    # Delivered: the webhook's 2xx of the coupons' pushes and of the notices alike.
    assert (by["cap-a"]["delivered"], by["cap-b"]["delivered"], by["win-back"]["delivered"]) == (2, 2, 1), by


def test_the_birthday_run_on_the_first(cw: WorkerProcess, clock_file: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    born, other = f"bd-yes-{tag}", f"bd-no-{tag}"
    month = FIRST.month
    member_events(cw, [register(cw, born, ["bd"], f"1990-{month:02d}-20"),
                       register(cw, other, ["bd"], f"1990-{month % 12 + 1:02d}-20")])
    cw.wait_caught_up()
    set_clock(clock_file, FIRST - dt.timedelta(minutes=1))
    before = len(runs(cw, "birthday"))
    set_clock(clock_file, FIRST + dt.timedelta(seconds=30))
    rs = wait_sent(cw, "birthday", before + 1)
    assert rs[0]["run"] == FIRST.strftime("%Y%m%d0900")
    assert triggers(cw, born)["birthday"] == 1 and triggers(cw, other)["birthday"] == 0


def test_a_run_killed_midway_resumes_and_reaches_each_member_once(cw: WorkerProcess, receiver: WebhookReceiver,
                                                                   clock_file: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    members = [f"bulk-{tag}-{i:03d}" for i in range(BULK)]
    member_events(cw, [register(cw, m, ["bulk"]) for m in members])
    cw.wait_caught_up()
    set_clock(clock_file, BULK_AT + dt.timedelta(seconds=30))
    # 100 members a second, progress saved every 200: killed after the first page.
    cw.wait_until(lambda: (rs := runs(cw, "bulk")) and 200 <= rs[0]["done"] < BULK, timeout=60,
                  what="the bulk run half sent")
    cw.kill()
    cw.start()
    (run,) = wait_sent(cw, "bulk", 1)
    assert run["done"] == BULK
    cw.wait_until(lambda: all(triggers(cw, m)["bulk"] == 1 for m in members), timeout=90,
                  what="every member's coupon")
    got = Counter(triggers(cw, m)["bulk"] for m in members)
    assert got == {1: BULK}, got
    cw.wait_until(lambda: all(receiver.pushes_for(m) for m in members), timeout=90, what="every member pushed")
    # One push each (a delivery in flight at the kill may arrive twice: the same push id).
    assert {m: len({p["push_id"] for p in receiver.pushes_for(m)}) for m in members} == dict.fromkeys(members, 1)
    # Every delivery recorded in the history, those of the batch the kill cut short too.
    cw.wait_until(lambda: bulk_kpi(cw)["delivered"] == BULK, timeout=60, what="every delivery in the history")
    assert (bulk_kpi(cw)["pushed"], bulk_kpi(cw)["issued"]) == (BULK, BULK)


def bulk_kpi(w: WorkerProcess) -> dict[str, Any]:
    status, kpis = w.get(f"/v1/admin/kpis?kpi=scheduled_campaigns&from={NOW.date()}"
                         f"&to={(BULK_AT + dt.timedelta(days=1)).date()}")
    assert status == 200, kpis
    return next((r for r in kpis["kpis"]["scheduled_campaigns"] if r["campaign"] == "bulk"),
                {"delivered": -1, "pushed": -1, "issued": -1})


def test_campaign_routes_answer_what_is_asked(cw: WorkerProcess) -> None:
    status, body = cw.get("/v1/admin/campaigns")
    assert status == 200 and body["frequency_cap"] == [2, 7]
    wb = next(c for c in body["campaigns"] if c["id"] == "win-back")
    assert wb["when"] == f"every day at {HM}" and wb["action"] == {"kind": "coupon", "template": "winback"}
    status, preview = cw.get("/v1/admin/campaigns/bulk/preview")
    assert status == 200 and preview["count"] >= BULK
    assert cw.get("/v1/admin/campaigns/nope/preview")[0] == 404
    assert wb["audience_id"] == "dormant-wb" and wb["audience"]["dormant_days"] == 90
    # The console's audiences: a saved one by id, and the new conditions in a definition.
    token = cw.admin_token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, saved = cw.post("/v1/admin/audiences/preview", orjson.dumps({"audience_id": "dormant-wb"}), headers)
    assert status == 200 and saved["count"] >= 1 and "dormant-wb" in saved["saved"], saved
    status, born = cw.post("/v1/admin/audiences/preview",
                           orjson.dumps({"audience": {"birthday_month": True, "tags": ["bd"]}}), headers)
    assert status == 200 and born["count"] >= 1 and all(m.startswith("bd-yes-") for m in born["sample"]), born
    # Every condition over the stored states, at the clock's time (the bulk run's): the dormant
    # wb member's lot (its month 95 days before now) expires at the start of the 13th month
    # after it, the other's (10 days before now) at least two months later; the gift coupons
    # of the birthday and the bulk runs are still valid; all registered a few weeks before;
    # both wb members paid in the mall.
    lot = NOW - dt.timedelta(days=95)
    expires = dt.datetime(lot.year + (lot.month + 12) // 12, (lot.month + 12) % 12 + 1, 1, tzinfo=TZ)
    days_left = (expires - (BULK_AT + dt.timedelta(seconds=30))).days
    for audience, want in (({"points_expiring_within_days": days_left + 1, "tags": ["wb"]}, 1),
                           ({"points_expiring_within_days": days_left - 1, "tags": ["wb"]}, 0),
                           ({"min_points": 1, "tags": ["wb"]}, 2),
                           ({"holds_coupon": "gift", "tags": ["bd"]}, 1),
                           ({"holds_coupon": "gift"}, BULK + 1),
                           ({"registered_within_days": 60, "tags": ["bd"]}, 2),
                           ({"registered_within_days": 7, "tags": ["bd"]}, 0),
                           ({"formats": ["mall"], "tags": ["wb"]}, 2),
                           ({"dormant_days": 90, "paid_within_days": 200, "tags": ["wb"]}, 1)):
        status, got = cw.post("/v1/admin/audiences/preview", orjson.dumps({"audience": audience}), headers)
        assert (status, got.get("count")) == (200, want), (audience, got)
    for bad, field in (({"audience_id": "nope"}, "audience_id"),
                       ({"audience": {"dormant_days": -1}}, "audience.dormant_days"),
                       ({"audience": {"birthday_month": "yes"}}, "audience.birthday_month"),
                       ({"audience": {"holds_coupon": "no-such"}}, "audience.holds_coupon")):
        status, err = cw.post("/v1/admin/audiences/preview", orjson.dumps(bad), headers)
        assert (status, err.get("field")) == (400, field), (bad, status, err)
    assert cw.get("/v1/admin/campaigns/win-back/runs/209901010000")[0] == 404
    assert cw.get("/v1/admin/campaigns", admin=False)[0] == 401
    body_ = orjson.dumps({"event_id": "x", "type": "campaign_push", "occurred_at": NOW.isoformat(),
                          "member_id": "m", "campaign": "bulk", "run": "1"})
    assert cw.post("/v1/callbacks/member", body_, signed_headers(cw.callback_secret, body_))[0] == 400, \
        "a campaign's push is the engine's own, never a callback's"


def test_the_console_shows_the_campaigns_and_counts_their_audiences(cw: WorkerProcess) -> None:
    from playwright.sync_api import sync_playwright

    from tests.integration.test_console import SHOTS, add_operator, launch, signed_in

    add_operator(cw, "admin-camp", "group_admin")
    with sync_playwright() as p:
        browser = launch(p)
        page = signed_in(browser, cw, "admin-camp", "group_admin", 900)
        page.click("#nav button[data-tab='audiences']")
        page.wait_for_selector("#camp-table[data-rows='6']")
        assert "at most 2 pushes per member within 7 days" in page.inner_text("#camp-cap")
        row = page.inner_text("#camp-table tbody tr:first-child")
        assert "Dormant 90 days" in row and f"every day at {HM}" in row and "dormant-wb: tag wb, dormant 90 days" in row
        assert "sent, 1 of 1" in row, row
        page.click("#camp-table button[data-campaign='bulk']")
        page.wait_for_selector(f"#camp-table td[data-count='{BULK}']")
        # A saved audience counted from the audience card, and a definition with the new conditions.
        page.select_option("#aud-saved", "dormant-wb")
        page.click("#aud-preview")
        page.wait_for_selector("#aud-status[data-count]")
        saved = int(page.get_attribute("#aud-status", "data-count") or "-1")
        assert saved == cw.get("/v1/admin/campaigns/win-back/preview")[1]["count"]
        page.select_option("#aud-saved", "")
        page.fill("#aud-tags", "bd")
        page.check("#aud-birthday")
        page.click("#aud-preview")
        page.wait_for_selector("#aud-status[data-count='1']")
        page.screenshot(path=str(SHOTS / "console-campaigns.png"), full_page=True)
        # The dashboard's campaigns table: the KPI's rows as the operator reads them.
        dash = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        dash.goto(f"{cw.base_url}/dashboard?from={NOW.date()}&to={(BULK_AT + dt.timedelta(days=1)).date()}")
        dash.fill("#token", cw.admin_token)
        dash.click("#apply")
        dash.wait_for_selector("body[data-loaded='1']", timeout=60_000)
        rows = int(dash.get_attribute("#campaigns", "data-rows") or 0)
        assert rows == 6, rows
        bulk_row = dash.inner_text("#campaigns tr:has-text('bulk')")
        assert bulk_row.split("\t")[:5] == ["bulk", "1", f"{BULK}", f"{BULK}", f"{BULK}"], bulk_row
        dash.screenshot(path=str(SHOTS / "dashboard-campaigns.png"), full_page=True)
        browser.close()


def test_the_cli_lists_campaigns_and_their_runs(cw: WorkerProcess) -> None:
    def loyalty(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", "campaigns", *args], env=cw.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    listed = loyalty()
    assert listed.returncode == 0, listed.stderr
    assert "frequency cap: 2 pushes per member within 7 days" in listed.stdout
    assert f"every day at {HM}" in listed.stdout and "run " in listed.stdout, listed.stdout
    run = orjson.loads(loyalty("run", "win-back", BASE.strftime("%Y%m%d%H%M")).stdout)
    assert (run["status"], run["total"]) == ("sent", 1)
    assert loyalty("run", "win-back", "209901010000").returncode != 0
    assert loyalty("preview").returncode == 2


def test_redis_holds_only_keys_of_known_families_each_bounded(cw: WorkerProcess) -> None:
    assert cw.keys_out_of_bounds() == []
