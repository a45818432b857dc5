"""Engagement end to end over the real services (issue 10): games with prize pools
(odds within tolerance over thousands of CSPRNG draws, every draw auditable in
ClickHouse, prize stock never oversold under concurrency, card collection), sign-in
plans, leaderboards from the accrual's atomic step, burn-side promotions settled
between BUs, partner exchange (pending, confirmed, failed, limits, inbound), stored
value (top-up, payment earning at its channel's rate, refund, its own ledger and
reconciliation), profile and referral rewards. Each ends with Redis = ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WebhookReceiver, WorkerProcess, post_signed_many, send_callbacks_in_order
from streams.signing import signed_headers
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration

PUSH_SECRET = "push-secret-engagement"

RULES = rules_toml("""
version = "engage-1"
utc_offset_minutes = 480
""", "mall", "hotel", "normal_tier", tail="""
[[leaderboards]]
period = "week"
scope = "group"
[[leaderboards]]
period = "month"
scope = "bu"
[wallet.default_rate]
points = 100
value_fen = 100
[behaviour]
registration_gift = 100
[behaviour.referral]
points = 300
max_per_month = 10
max_total = 2

[[coupon_templates]]
id = "tpl-10"
kind = "amount_off"
amount_off_fen = 1000
valid_days = 30
[[coupon_templates]]
id = "umbrella"
kind = "item"
item = "umbrella"
item_value_fen = 3000
valid_days = 30

[[games]]
id = "wheel"
kind = "wheel"
cost_points = 10
daily_limit = 1000
[[games.prizes]]
id = "p-points"
odds_ppm = 200000
points = 50
[[games.prizes]]
id = "p-coupon"
odds_ppm = 100000
coupon = "tpl-10"
[[games.prizes]]
id = "p-umbrella"
odds_ppm = 50000
stock = 3
coupon = "umbrella"

[[games]]
id = "rush"
kind = "golden_egg"
cost_points = 0
[[games.prizes]]
id = "gold"
odds_ppm = 1000000
stock = 5
points = 100

[[games]]
id = "zodiac"
kind = "cards"
cost_points = 5
set_reward_points = 888
[[games.prizes]]
id = "c-rat"
odds_ppm = 500000
card = "rat"
[[games.prizes]]
id = "c-ox"
odds_ppm = 500000
card = "ox"

[[sign_in_plans]]
id = "week"
cycle_days = 7
rewards = [5, 10, 15, 20, 25, 30, 100]
makeup_cost_points = 20
makeup_max_per_cycle = 2
contract_min_stake = 50
contract_max_stake = 500
contract_bonus_pct = 50

[[burn_promotions]]
id = "hotel-double"
kinds = ["cash_offset"]
bus = ["mall"]
categories = ["fashion"]
value_pct = 200
earned_bus = ["hotel"]
earned_within_days = 7
funded_by = "hotel"
[[burn_promotions]]
id = "mall-sale"
kinds = ["mall_exchange"]
price_pct = 80

[[partners]]
id = "air"
kind = "airline"
points_per_unit_out = 10
points_per_unit_in = 5
unit_value_fen = 8
daily_limit_points = 5000

[[partners]]
id = "slow-bank"
kind = "bank"
points_per_unit_out = 10
unit_value_fen = 8
daily_limit_points = 5000
answer_wait_s = 3

[stored_value]
max_balance_fen = 500000
max_topup_fen = 200000
[[channels]]
id = "stored_value"
multiplier_pct = 200

[[profile_rewards]]
id = "basic"
fields = ["name", "gender", "birthday"]
points = 50
""")

WHEEL_ODDS = {"p-points": 0.20, "p-coupon": 0.10, "p-umbrella": 0.05, "": 0.65}


@pytest.fixture(scope="module")
def ew(services: None, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from tests.integration.conftest import new_worker

    tmp = tmp_path_factory.mktemp("engage")
    rules = tmp / "engage.toml"
    rules.write_text(RULES)
    w = new_worker(tmp, "engage", LOYALTY_RULES=str(rules), LOYALTY_PUSH_WEBHOOK_URL=receiver.url,
                   LOYALTY_PUSH_SECRET=PUSH_SECRET, LOYALTY_PUSH_BACKOFF="0.05", LOYALTY_RATE_LIMIT_POS="100000",
                   LOYALTY_WALLET_CHECK_INTERVAL="1")
    w.start()
    yield w
    w.stop()
    w.cleanup()


def mid(prefix: str = "e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_iso(days_ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)).isoformat(timespec="seconds")


def pay(member: str, amount: int, bu: str = "mall", category: str = "fashion") -> dict[str, Any]:
    return {"event_id": f"tx-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": now_iso(),
            "member_id": member, "bu_id": bu, "merchant_id": f"{bu}-s1", "category": category,
            "amount_fen": amount, "channel": "wechat"}


def fund(w: WorkerProcess, members: list[str], amount: int, bu: str = "mall") -> None:
    """Points through the real pipeline: one payment per member, waited for."""
    before = {m: events(w, m) for m in members}
    bodies = [orjson.dumps(pay(m, amount, bu)) for m in members]
    results = asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, bodies))
    assert all(s == 202 for s, _ in results), results
    for m in members:
        w.wait_until(lambda m=m: events(w, m) > before[m], timeout=60, what=f"{m} funded")


def member(w: WorkerProcess, m: str) -> dict[str, Any]:
    status, body = w.get(f"/v1/members/{m}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def events(w: WorkerProcess, m: str) -> int:
    """Events applied for a member (0 before the first)."""
    return int(w.get(f"/v1/members/{m}")[1].get("events", 0))


def balance(w: WorkerProcess, m: str) -> int | None:
    status, body = w.get(f"/v1/members/{m}")
    return int(body["balance"]) if status == 200 else None


def post(w: WorkerProcess, path: str, req: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    body = orjson.dumps(req)
    headers = w.pos_headers(body)
    if key is not None:
        headers["Idempotency-Key"] = key
    return w.post(path, body, headers)


def partner_post(w: WorkerProcess, path: str, req: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    body = orjson.dumps(req)
    headers = signed_headers(w.callback_secret, body)
    if key is not None:
        headers["Idempotency-Key"] = key
    return w.post(path, body, headers)


def draws(w: WorkerProcess, game: str, limit: int = 10_000) -> dict[str, Any]:
    status, body = w.get(f"/v1/admin/games/{game}/draws?limit={limit}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def settlement(w: WorkerProcess, event_id: str) -> dict[str, int]:
    """Net fen per account of one event's settlement lines (ClickHouse)."""
    w.wait_until(lambda: w.get(f"/v1/admin/settlement/events/{event_id}")[1]["lines"], timeout=60,
                 what=f"settlement lines of {event_id}")
    out: dict[str, int] = {}
    for line in w.get(f"/v1/admin/settlement/events/{event_id}")[1]["lines"]:
        out[line["account"]] = out.get(line["account"], 0) + line["amount_fen"]
    return out


def reconciled(w: WorkerProcess) -> None:
    w.wait_until(lambda: w.get("/v1/admin/reconcile")[1]["clean"], timeout=60, what="points: Redis = ledger")
    w.wait_until(lambda: w.get("/v1/admin/stored-value/reconcile")[1]["clean"], timeout=60,
                 what="stored value: Redis = ledger")


# ---- games ------------------------------------------------------------------------

def test_game_odds_match_within_tolerance_and_every_draw_is_auditable(ew: WorkerProcess) -> None:
    players = [mid("g") for _ in range(20)]
    fund(ew, players, 200_000)  # 2,000 points each: 200 plays at 10
    plays = [("/v1/games/wheel/plays", {"member_id": players[i % 20]}, f"play-{uuid.uuid4().hex[:12]}")
             for i in range(3000)]
    results = asyncio.run(post_signed_many(ew, plays))
    assert all(s == 201 for s, _ in results), Counter(s for s, _ in results)
    prize_of = Counter(r["prize"]["prize"] if r["prize"] else "" for _, r in results)
    # The umbrella's 3 units went to 3 players; its later draws were out of stock.
    outcomes = Counter(r["outcome"] for _, r in results)
    assert prize_of["p-umbrella"] == 3
    drawn = Counter()
    for _, r in results:
        cum, hit = 0, ""
        for pid, odds in (("p-points", 200_000), ("p-coupon", 100_000), ("p-umbrella", 50_000)):
            cum += odds
            if r["draw"] < cum:
                hit = pid
                break
        drawn[hit] += 1
        assert (r["outcome"] == "thanks") == (hit == "")
    assert outcomes["out_of_stock"] == drawn["p-umbrella"] - 3
    # Chi-square over the drawn categories, 3 degrees of freedom: 16.27 is p = 0.001.
    n = len(results)
    chi2 = sum((drawn[k] - n * p) ** 2 / (n * p) for k, p in WHEEL_ODDS.items())
    assert chi2 < 16.27, (chi2, drawn)
    # Points: every play cost 10; each points prize gave 50.
    spent = sum(10 for _ in results)
    won = 50 * prize_of["p-points"]
    assert sum(member(ew, m)["balance"] for m in players) == 20 * 2000 - spent + won
    # Every play is in game_draws with its draw, the odds it met and its outcome.
    ew.wait_until(lambda: sum(o["plays"] for o in draws(ew, "wheel", 1)["outcomes"]) == n, timeout=60,
                  what="draws in ClickHouse")
    audit = {d["play_id"]: d for d in draws(ew, "wheel")["draws"]}
    for (_, _req, key), (_, r) in zip(plays, results, strict=True):
        assert audit[key]["draw"] == r["draw"] and audit[key]["outcome"] == r["outcome"]
        assert audit[key]["member_id"] == r["member_id"]
    assert [o["odds_ppm"] for o in audit[plays[0][2]]["odds"]] == [200_000, 100_000, 50_000]
    # Coupons won are in the coupon history (and wallets).
    ew.wait_until(lambda: {(r["kind"], r["template"]): r["coupons"] for r in ew.get("/v1/admin/coupons/totals")[1]
                           ["rows"]}.get(("issued", "umbrella")) == 3, timeout=60, what="coupon history")
    totals = {(r["kind"], r["template"]): r["coupons"] for r in ew.get("/v1/admin/coupons/totals")[1]["rows"]}
    assert totals[("issued", "tpl-10")] == prize_of["p-coupon"]
    reconciled(ew)


def test_prize_stock_is_never_oversold_under_concurrency(ew: WorkerProcess) -> None:
    players = [mid("r") for _ in range(30)]
    plays = [("/v1/games/rush/plays", {"member_id": players[i % 30]}, f"rush-{uuid.uuid4().hex[:12]}")
             for i in range(90)]
    results = asyncio.run(post_signed_many(ew, plays, concurrency=30))
    assert all(s == 201 for s, _ in results), results
    outcomes = Counter(r["outcome"] for _, r in results)
    assert outcomes == {"prize": 5, "out_of_stock": 85}
    winners = [r["member_id"] for _, r in results if r["outcome"] == "prize"]
    assert sum(member(ew, m)["balance"] for m in players) == 500
    assert Counter(winners).total() == 5
    reconciled(ew)


def test_card_collection_completes_a_set_once(ew: WorkerProcess) -> None:
    m = mid("c")
    fund(ew, [m], 100_000)  # 1,000 points
    done = None
    for i in range(60):
        status, r = post(ew, "/v1/games/zodiac/plays", {"member_id": m}, f"card-{m}-{i}")
        assert status == 201, r
        assert r["prize"]["kind"] == "card"
        if r["set_completed"]:
            done = (i + 1, r)
            break
    assert done is not None, "no set in 60 plays at 50/50"
    plays, r = done
    assert r["set_completed"]["points"] == 888
    assert member(ew, m)["balance"] == 1000 - 5 * plays + 888
    # One of each card was used up by the set; the others stay.
    status, view = ew.get(f"/v1/members/{m}/engagement")
    assert status == 200 and sum(view["engagement"]["cards"].get("zodiac", {}).values()) == plays - 2
    # A retry of the last play is answered the same, with no second effect.
    status, again = post(ew, "/v1/games/zodiac/plays", {"member_id": m}, f"card-{m}-{plays - 1}")
    assert status == 200 and again == r
    assert member(ew, m)["balance"] == 1000 - 5 * plays + 888
    reconciled(ew)


def test_game_refusals(ew: WorkerProcess) -> None:
    m = mid("x")
    assert post(ew, "/v1/games/wheel/plays", {"member_id": m}, f"x-{m}")[0] == 409  # no points
    assert post(ew, "/v1/games/nope/plays", {"member_id": m}, f"y-{m}")[0] == 400
    assert post(ew, "/v1/games/wheel/plays", {"member_id": m, "game": "rush"}, f"z-{m}")[0] == 400
    assert post(ew, "/v1/games/wheel/plays", {"member_id": m})[0] == 400  # no Idempotency-Key
    assert ew.get(f"/v1/members/{m}")[0] == 404  # nothing was applied


# ---- sign-in plans ------------------------------------------------------------------

def test_sign_in_plan_contract_and_makeup(ew: WorkerProcess) -> None:
    m = mid("s")
    status, r = post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m}, f"si-{m}-1")
    assert status == 201 and r["points"] == 5 and r["streak"] == 1, r
    assert post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m}, f"si-{m}-1") == (200, r)
    status, again = post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m}, f"si-{m}-2")
    assert status == 409 and "already signed in" in again["error"]
    # A make-up needs an earlier day of this cycle (it started today).
    yesterday = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=8) - dt.timedelta(days=1)).date().isoformat()
    status, mk = post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m, "date": yesterday}, f"mk-{m}")
    assert status == 409 and "cycle" in mk["error"], mk
    fund(ew, [m], 20_000)  # 200 points
    assert post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m, "stake": 10}, f"ct-{m}-0")[0] == 400
    status, c = post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m, "stake": 150}, f"ct-{m}-1")
    assert status == 201 and c["status"] == "staked" and c["stake"] == 150, c
    assert post(ew, "/v1/sign-in-plans/week/sign-ins", {"member_id": m, "stake": 50}, f"ct-{m}-2")[0] == 409
    assert member(ew, m)["balance"] == 5 + 200 - 150
    status, view = ew.get(f"/v1/members/{m}/engagement")
    assert view["engagement"]["plans"]["week"]["contract"]["stake"] == 150
    reconciled(ew)


# ---- leaderboards -------------------------------------------------------------------

def test_leaderboards_follow_accrual_and_refunds(ew: WorkerProcess) -> None:
    a, b, c = mid("la"), mid("lb"), mid("lc")
    pa, pb = pay(a, 900_000), pay(b, 500_000, bu="hotel")   # 9,000 and 10,000 points
    pc = pay(c, 700_000)                                        # 7,000
    refund = {**pa, "event_id": pa["event_id"] + "-rf", "type": "refund", "refund_of": pa["event_id"],
              "amount_fen": 300_000}                            # a: -3,000
    bodies = [orjson.dumps(e) for e in (pa, pb, pc, refund)]
    asyncio.run(send_callbacks_in_order(ew.base_url, ew.callback_secret, bodies))
    ew.wait_until(lambda: events(ew, a) >= 2, timeout=60, what="refund applied")

    def week() -> dict[str, int]:
        status, top = ew.get("/v1/leaderboards/week/group?limit=100")
        assert status == 200
        return {e["member"]: e["points"] for e in top["top"]}

    # Boards follow the ledger topic (its consumer takes each member's newest score).
    ew.wait_until(lambda: all(m in week() for m in (a, b, c)) and week()[a] == 6_000, timeout=60,
                  what="the boards")
    scores = week()
    assert (scores[b], scores[c], scores[a]) == (10_000, 7_000, 6_000)
    status, mall = ew.get("/v1/leaderboards/month/mall?limit=100")
    mall_scores = {e["member"]: e["points"] for e in mall["top"]}
    assert b not in mall_scores and mall_scores[c] == 7_000 and mall_scores[a] == 6_000
    # A member's own rank, with their own token; other members are masked for them.
    token = ew.member_token(c)
    status, rank = ew.get(f"/v1/members/{c}/rank?period=month&scope=mall", token=token)
    assert status == 200 and rank["points"] == 7_000
    assert rank["rank"] == 1 + sum(1 for p in mall_scores.values() if p > 7_000)
    status, seen = ew.get("/v1/leaderboards/week/group?limit=100", token=token)
    names = {e["member"] for e in seen["top"]}
    assert c in names and a not in names and b not in names
    assert ew.get(f"/v1/members/{a}/rank", token=token)[0] == 403
    assert ew.get("/v1/leaderboards/year/group")[0] == 400
    assert ew.get("/v1/leaderboards/week/mall")[0] == 404, "no weekly board per business unit in these rules"
    # Replaying the same callbacks counts nothing twice.
    asyncio.run(send_callbacks_in_order(ew.base_url, ew.callback_secret, bodies))
    ew.wait_until(lambda: ew.metrics().get("events_duplicate_total", 0) >= 4, timeout=60, what="duplicates")
    assert {e["member"]: e["points"] for e in ew.get("/v1/leaderboards/week/group?limit=100")[1]["top"]}[a] == 6_000
    reconciled(ew)


# ---- burn-side promotions -----------------------------------------------------------

def test_burn_promotion_values_hotel_points_double_in_mall_fashion(ew: WorkerProcess) -> None:
    m = mid("b")
    fund(ew, [m], 10_000, bu="hotel")          # 200 points earned at the hotel
    body = orjson.dumps(pay(m, 30_000))        # 300 points at the mall
    asyncio.run(send_callbacks_in_order(ew.base_url, ew.callback_secret, [body]))
    ew.wait_until(lambda: events(ew, m) >= 2, timeout=60, what="mall payment")
    req = {"member_id": m, "bu_id": "mall", "kind": "cash_offset", "points": 300, "category": "fashion"}
    status, r = post(ew, "/v1/redemptions", req, f"bp-{m}-1")
    assert status == 201, r
    # 300 points at 1 fen each = 300 fen, and the 200 hotel points are worth double: +200 fen.
    assert r["value_fen"] == 500 and r["promotion"]["id"] == "hotel-double" and r["promotion"]["points"] == 200
    # The hotel pays the mall the extra value (settlement lines in ClickHouse).
    fen = settlement(ew, f"bp-{m}-1")
    assert fen["bu:hotel"] == -200 and fen["bu:mall"] == 300 + 200 and fen["pool"] == -300
    assert sum(fen.values()) == 0
    # The hotel points are used up: the next redemption gets no promotion.
    fund_more = orjson.dumps(pay(m, 20_000))
    asyncio.run(send_callbacks_in_order(ew.base_url, ew.callback_secret, [fund_more]))
    ew.wait_until(lambda: events(ew, m) >= 4, timeout=60, what="second mall payment")
    status, r2 = post(ew, "/v1/redemptions", {**req, "points": 100}, f"bp-{m}-2")
    assert status == 201 and r2["value_fen"] == 100 and r2["promotion"] is None, r2
    # Limited-time points price in the points mall: 80% of the list price.
    status, r3 = post(ew, "/v1/redemptions", {"member_id": m, "bu_id": "mall", "kind": "mall_exchange",
                                              "points": 100, "item": "mug"}, f"bp-{m}-3")
    assert status == 201 and r3["points"] == 80 and r3["list_points"] == 100, r3
    assert member(ew, m)["balance"] == 200 + 300 + 200 - 300 - 100 - 80
    # Reversal gives the points back and reverses every settlement line, the promotion's too.
    body = orjson.dumps({"member_id": m})
    status, rev = ew.post(f"/v1/redemptions/bp-{m}-1/reverse", body, ew.pos_headers(body))
    assert status == 201 and rev["points"] == 300
    back = settlement(ew, f"bp-{m}-1:reverse")
    assert all(back[a] == -fen[a] for a in fen), (fen, back)
    reconciled(ew)


# ---- partner exchange ---------------------------------------------------------------

def test_an_exchange_the_partner_never_answers_is_failed_after_its_wait(ew: WorkerProcess) -> None:
    m = mid("slow")
    fund(ew, [m], 300_000)  # 3,000 points
    status, x = post(ew, "/v1/exchanges", {"member_id": m, "partner": "slow-bank", "points": 1000}, f"xs-{m}")
    assert status == 201 and x["status"] == "pending", x
    assert member(ew, m)["balance"] == 2000
    # No answer within the partner's 3 s: the wallet check fails it and the points come back.
    ew.wait_until(lambda: member(ew, m)["balance"] == 3000, timeout=60, what="the unanswered exchange returned")
    row = next(r for r in member(ew, m)["recent_movements"] if r["kind"] == "exchange_returned")
    assert row["explain"][0] == {"rule": "partner_timeout", "id": f"xs-{m}", "points": 1000}, row
    assert not ew.get(f"/v1/members/{m}/engagement")[1]["engagement"].get("exchanges"), "nothing pending"
    # The partner's late answer finds nothing pending.
    late = {"member_id": m, "exchange_id": f"xs-{m}", "status": "confirmed"}
    status, answer = partner_post(ew, "/v1/partners/slow-bank/confirmations", late)
    assert status == 409 and "no pending exchange" in answer["error"], answer


def test_partner_exchange_pending_confirmed_failed_and_limits(ew: WorkerProcess, receiver: WebhookReceiver) -> None:
    m = mid("p")
    fund(ew, [m], 800_000)  # 8,000 points
    status, x1 = post(ew, "/v1/exchanges", {"member_id": m, "partner": "air", "points": 2000}, f"x1-{m}")
    assert status == 201 and x1["status"] == "pending" and x1["units"] == 200, x1
    assert post(ew, "/v1/exchanges", {"member_id": m, "partner": "air", "points": 2000}, f"x1-{m}") == (200, x1)
    assert post(ew, "/v1/exchanges", {"member_id": m, "partner": "air", "points": 15}, f"x9-{m}")[0] == 400
    # The request reached the partner once, with the exchange id as its idempotency key.
    ew.wait_until(lambda: receiver.ids()[f"x1-{m}"] >= 1, timeout=60, what="partner request")
    sent = [b for pid, b, _ in receiver.received if pid == f"x1-{m}"]
    assert sent[0]["units"] == 200 and sent[0]["partner"] == "air"
    # The longest key an exchange may have (64 characters): its answer is still taken.
    x2 = (f"x2-{m}-" + "k" * 64)[:64]
    assert post(ew, "/v1/exchanges", {"member_id": m, "partner": "air", "points": 3000}, x2)[0] == 201
    # The daily limit (5,000 points out) refuses a third.
    status, over = post(ew, "/v1/exchanges", {"member_id": m, "partner": "air", "points": 10}, f"x3-{m}")
    assert status == 409 and "daily limit" in over["error"]
    assert member(ew, m)["balance"] == 8000 - 5000
    ok = {"member_id": m, "exchange_id": f"x1-{m}", "status": "confirmed"}
    status, c1 = partner_post(ew, "/v1/partners/air/confirmations", ok)
    assert status == 201 and c1["status"] == "confirmed" and c1["points_returned"] == 0
    assert partner_post(ew, "/v1/partners/air/confirmations", ok) == (200, c1)
    status, c2 = partner_post(ew, "/v1/partners/air/confirmations",
                              {"member_id": m, "exchange_id": x2, "status": "failed"})
    assert status == 201 and c2["points_returned"] == 3000
    assert member(ew, m)["balance"] == 8000 - 2000
    assert partner_post(ew, "/v1/partners/air/confirmations",
                        {"member_id": m, "exchange_id": "nope", "status": "failed"})[0] == 404
    # Points in from the partner: 100 miles at 5 points each, once per transfer id.
    status, cin = partner_post(ew, "/v1/partners/air/credits", {"member_id": m, "units": 100}, f"in-{m}")
    assert status == 201 and cin["points"] == 500
    assert partner_post(ew, "/v1/partners/air/credits", {"member_id": m, "units": 100}, f"in-{m}") == (200, cin)
    assert partner_post(ew, "/v1/partners/air/credits", {"member_id": m, "units": 1000}, f"in2-{m}")[0] == 409
    assert member(ew, m)["balance"] == 8000 - 2000 + 500
    # Unsigned or POS-signed partner calls are refused.
    body = orjson.dumps({"member_id": m, "units": 1})
    assert ew.post("/v1/partners/air/credits", body, {**ew.pos_headers(body), "Idempotency-Key": "k"})[0] == 403
    reconciled(ew)


# ---- stored value -------------------------------------------------------------------

def test_stored_value_topup_pay_refund_ledger_and_points(ew: WorkerProcess) -> None:
    m = mid("v")
    status, t = post(ew, "/v1/stored-value/topups", {"member_id": m, "amount_fen": 100_000, "channel": "wechat"},
                     f"t1-{m}")
    assert status == 201 and t["balance_fen"] == 100_000, t
    assert post(ew, "/v1/stored-value/topups", {"member_id": m, "amount_fen": 100_000, "channel": "wechat"},
                f"t1-{m}") == (200, t)
    assert post(ew, "/v1/stored-value/topups", {"member_id": m, "amount_fen": 300_000, "channel": "wechat"},
                f"t2-{m}")[0] == 400  # above the top-up maximum
    sale = {"member_id": m, "amount_fen": 30_000, "bu_id": "mall", "merchant_id": "mall-s1", "category": "fashion"}
    status, p = post(ew, "/v1/stored-value/payments", sale, f"sv-pay-{m}")
    assert status == 201 and p["balance_fen"] == 70_000, p
    # The payment earns through the pipeline at the stored-value channel's rate: 300 x 2.
    ew.wait_until(lambda: balance(ew, m) == 600, timeout=60, what="points of the stored-value payment")
    assert p["event"]["channel"] == "stored_value" and p["event"]["event_id"] == f"sv-pay-{m}"
    # A retry is answered as before and sends the payment again, which accrual takes once.
    dups = ew.metrics().get("events_duplicate_total", 0)
    assert post(ew, "/v1/stored-value/payments", sale, f"sv-pay-{m}") == (200, p)
    ew.wait_until(lambda: ew.metrics().get("events_duplicate_total", 0) > dups, timeout=60, what="the resent payment")
    assert balance(ew, m) == 600
    assert post(ew, "/v1/stored-value/payments", {**sale, "amount_fen": 80_000}, f"sv-pay2-{m}")[0] == 409
    status, rf = post(ew, "/v1/stored-value/refunds", {"member_id": m, "payment_id": f"sv-pay-{m}",
                                                       "amount_fen": 10_000}, f"sv-rf-{m}")
    assert status == 201 and rf["balance_fen"] == 80_000, rf
    ew.wait_until(lambda: balance(ew, m) == 400, timeout=60, what="clawback of the refund")
    status, over = post(ew, "/v1/stored-value/refunds", {"member_id": m, "payment_id": f"sv-pay-{m}",
                                                         "amount_fen": 25_000}, f"sv-rf2-{m}")
    assert status == 409 and "exceeds" in over["error"]
    assert post(ew, "/v1/stored-value/refunds", {"member_id": m, "payment_id": "unknown", "amount_fen": 1},
                f"sv-rf3-{m}")[0] == 409
    status, view = ew.get(f"/v1/members/{m}/engagement")
    assert view["stored_value_balance_fen"] == 80_000 == view["engagement"]["stored_value_fen"]
    reconciled(ew)
    status, sv = ew.get(f"/v1/members/{m}/stored-value")
    assert status == 200 and sv["balance_fen"] == 80_000
    assert [(r["kind"], r["amount_fen"], r["balance_after_fen"]) for r in sv["rows"]] == [
        ("topup", 100_000, 100_000), ("pay", -30_000, 70_000), ("refund", 10_000, 80_000)]
    # Settlement: the float holds what members prepaid; the merchant is paid through the payment.
    assert settlement(ew, f"t1-{m}") == {"gateway": -100_000, "sv_float": 100_000}
    # The payment: the float hands the money to the payment, whose own lines pay the merchant.
    ew.wait_until(lambda: "merchant:mall-s1" in settlement(ew, f"sv-pay-{m}"), timeout=60, what="payment lines")
    fen = settlement(ew, f"sv-pay-{m}")
    assert fen["sv_float"] == -30_000 and fen["gateway"] == 0 and fen["merchant:mall-s1"] > 0, fen
    assert sum(fen.values()) == 0


# ---- profile and referral -----------------------------------------------------------

def member_event(w: WorkerProcess, event: dict[str, Any]) -> None:
    body = orjson.dumps(event)
    status, answer = w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))
    assert status == 202, answer


def register(w: WorkerProcess, m: str, phone: str | None = None, by: str | None = None,
             **extra: Any) -> None:
    ev: dict[str, Any] = {"event_id": f"reg-{m}", "type": "register", "occurred_at": now_iso(), "member_id": m,
                          **extra}
    if phone:
        ev["external_ids"] = [{"kind": "phone", "id": phone}]
    if by:
        ev["referred_by"] = by
    member_event(w, ev)


def test_profile_and_referral_rewards_with_anti_abuse(ew: WorkerProcess) -> None:
    inviter = mid("i")
    register(ew, inviter, phone=f"139{uuid.uuid4().int % 10**8:08d}")
    ew.wait_until(lambda: balance(ew, inviter) == 100, timeout=60, what="inviter registered")
    phone = f"138{uuid.uuid4().int % 10**8:08d}"
    first, twin, second, third, noph = (mid("n") for _ in range(5))
    register(ew, first, phone=phone, by=inviter)
    ew.wait_until(lambda: balance(ew, inviter) == 400, timeout=60, what="first referral")
    register(ew, twin, phone=phone, by=inviter)                        # the same phone again: nothing
    register(ew, noph, by=inviter)                                     # no phone: nothing
    register(ew, second, phone=f"137{uuid.uuid4().int % 10**8:08d}", by=inviter)
    ew.wait_until(lambda: balance(ew, inviter) == 700, timeout=60, what="second referral")
    register(ew, third, phone=f"136{uuid.uuid4().int % 10**8:08d}", by=inviter)  # past max_total = 2
    ew.wait_until(lambda: balance(ew, third) == 100 and balance(ew, twin) == 100
                  and balance(ew, noph) == 100, timeout=60, what="registrations")
    ew.wait_until(lambda: events(ew, inviter) >= 4, timeout=60, what="third referral event")
    assert member(ew, inviter)["balance"] == 700
    # Profile: 50 points once the name, gender and birthday are all filled in, once.
    member_event(ew, {"event_id": f"pf1-{first}", "type": "profile", "occurred_at": now_iso(), "member_id": first,
                      "profile_fields": ["name"]})
    member_event(ew, {"event_id": f"pf2-{first}", "type": "profile", "occurred_at": now_iso(), "member_id": first,
                      "profile_fields": ["gender"], "birthday": "1990-05-01"})
    member_event(ew, {"event_id": f"pf3-{first}", "type": "profile", "occurred_at": now_iso(), "member_id": first,
                      "profile_fields": ["name", "gender", "email"]})
    ew.wait_until(lambda: events(ew, first) >= 4, timeout=60, what="profile events")
    assert member(ew, first)["balance"] == 100 + 50
    view = ew.get(f"/v1/members/{first}/engagement")[1]
    assert view["engagement"]["profile_rewards"] == ["basic"]
    bad = {"event_id": f"pf4-{first}", "type": "profile", "occurred_at": now_iso(), "member_id": first,
           "profile_fields": ["salary"]}
    body = orjson.dumps(bad)
    assert ew.post("/v1/callbacks/member", body, signed_headers(ew.callback_secret, body))[0] == 400
    reconciled(ew)


def test_engagement_rules_errors_name_the_field(tmp_path: Path) -> None:
    import core_ext

    broken = RULES.replace("odds_ppm = 50000", "odds_ppm = 750000")
    with pytest.raises(core_ext.RulesError) as e:
        core_ext.RuleSet.from_toml(broken, "engage.toml")
    assert "odds_ppm" in e.value.field and "1000000" in e.value.reason


def test_redis_holds_only_keys_of_known_families_each_bounded(ew: WorkerProcess) -> None:
    """After this module's traffic: every key described in streams/state/keys.py, and each
    one of a family that grows per event or request carrying its expiry."""
    assert ew.keys_out_of_bounds() == []
