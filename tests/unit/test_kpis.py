"""Every KPI query, run on the embedded ClickHouse over a generated history, against the
same figure computed here in plain Python from the generated records (not by SQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.bi import KPIS, Filters, run_kpis
from streams.sinks.ledger import LedgerStore

UTC = dt.UTC
T0 = dt.datetime(2026, 9, 1, tzinfo=UTC)
START, END = dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 23, tzinfo=UTC)
FORMATS = {"mall": "mall", "hotel": "hotel", "cvs": "convenience", "park": "parking"}
CATEGORIES = ["food", "food", "fashion", "sports", "dining", "x"]
TIERS = ["normal", "silver", "gold"]


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def trunc_div(a: int, b: int) -> int:
    """ClickHouse's intDiv (truncates toward zero), with 0 for a zero divisor as the queries do."""
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def row(event_id: str, member: str, kind: str, at: dt.datetime, points: int = 0, amount: int = 0, bu: str = "",
        tier: str = "normal", explain: list[dict[str, Any]] | None = None, refund_of: str = "",
        settlement: list[dict[str, Any]] | None = None, category: str = "x") -> dict[str, Any]:
    return {"event_id": event_id, "member_id": member, "kind": kind, "points": points, "amount_fen": amount,
            "bu_id": bu, "format": FORMATS.get(bu, ""), "merchant_id": f"{bu}-shop" if bu else "",
            "category": category, "channel": "wechat", "occurred_at_ms": ms(at), "refund_of": refund_of, "tier": tier,
            "rules_version": "t", "processed_at_ms": ms(at), "explain": explain or [], "lots": [],
            "batch_index": 0, "settlement": settlement or []}


class History:
    """A random but seeded history, kept as plain records for the Python answers."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.rows: list[dict[str, Any]] = []
        self.guests: list[dict[str, Any]] = []
        self.parking: list[dict[str, Any]] = []
        self.coupon_rows: list[dict[str, Any]] = []
        span = int((END - T0).total_seconds()) + 10 * 86_400  # some activity after END, to be left out
        n = 0
        for i in range(120):
            m = f"m{i:03d}"
            reg = T0 + dt.timedelta(seconds=rng.randrange(span))
            self.rows.append(row(f"reg-{m}", m, "register", reg, points=100))
            if rng.random() < 0.1:  # a second registration event: still one member
                self.rows.append(row(f"reg2-{m}", m, "register", reg + dt.timedelta(hours=1)))
            tier = "normal"
            for _ in range(rng.randrange(0, 9)):
                n += 1
                at = reg + dt.timedelta(seconds=rng.randrange(max(1, span // 2)))
                bu = rng.choice(list(FORMATS))
                amount = rng.randrange(100, 50_000)
                explain = [{"rule": "base", "points": amount // 100}]
                if rng.random() < 0.3:
                    explain.append({"rule": "campaign", "id": rng.choice(["double", "lunch"]), "points": 7})
                pts = sum(p["points"] for p in explain)
                settle = [{"account": f"merchant:{bu}-shop", "amount_fen": amount, "points": 0},
                          {"account": "gateway", "amount_fen": -amount, "points": 0}]
                self.rows.append(row(f"p{n}", m, "earn", at, pts, amount, bu, tier, explain, settlement=settle,
                                     category=rng.choice(CATEGORIES)))
                if rng.random() < 0.2:
                    part = rng.randrange(1, amount + 1)
                    self.rows.append(row(f"r{n}", m, "clawback", at + dt.timedelta(hours=2), -(pts * part // amount),
                                         part, bu, tier, refund_of=f"p{n}"))
                if rng.random() < 0.2:
                    self.rows.append(row(f"u{n}", m, "redeem", at + dt.timedelta(hours=1), -rng.randrange(1, 50), 0,
                                         rng.choice(list(FORMATS)), tier))
                if rng.random() < 0.1 and tier != "gold":
                    new = TIERS[TIERS.index(tier) + 1]
                    self.rows.append(row(f"p{n}", m, "tier_change", at, 0, 0, bu, new,
                                         [{"rule": "upgrade", "id": f"{tier}->{new}", "points": 0}]))
                    tier = new
            if rng.random() < 0.1:
                at = T0 + dt.timedelta(seconds=rng.randrange(span))
                self.rows.append(row(f"exp-{m}", m, "expire", at, -rng.randrange(1, 30)))
        for k in range(60):
            at = T0 + dt.timedelta(seconds=rng.randrange(span))
            bu = rng.choice(list(FORMATS))
            kind = "payment" if rng.random() < 0.8 else "refund"
            self.guests.append({"event_id": f"g{k}", "type": kind, "payer_kind": "wechat", "payer_id": f"o{k % 9}",
                                "amount_fen": rng.randrange(100, 9_000), "bu_id": bu, "format": FORMATS[bu],
                                "merchant_id": "s", "category": "x", "channel": "wechat", "occurred_at_ms": ms(at),
                                "refund_of": "", "processed_at_ms": ms(at)})
        for k in range(40):
            at = T0 + dt.timedelta(seconds=rng.randrange(span))
            gross = rng.randrange(0, 6_000)
            fee = rng.randrange(0, gross + 1)
            used = rng.randrange(0, 100)
            self.parking.append({"event_id": f"x{k}", "status": "closed", "plate": f"P{k}", "car_park": "park",
                                 "member_id": rng.choice(["", f"m{k:03d}"]), "entry_ms": ms(at) - 3_600_000,
                                 "exit_ms": ms(at), "minutes": rng.randrange(1, 300), "gross_fee_fen": gross,
                                 "fee_fen": fee, "points_used": used, "points_value_fen": used, "due_fen": fee - used,
                                 "deductions": []})
        for k in range(80):
            at = T0 + dt.timedelta(seconds=rng.randrange(span))
            cid, tpl = f"c{k}", rng.choice(["welcome", "pct"])
            base = {"member_id": f"m{k:03d}", "coupon_id": cid, "template": tpl, "trigger": tpl,
                    "coupon_kind": "amount_off", "face_value_fen": 500, "valid_until_ms": ms(at) + 86_400_000}
            self.coupon_rows.append({**base, "event_id": f"e{k}", "kind": "issued", "occurred_at_ms": ms(at),
                                 "processed_at_ms": ms(at)})
            if rng.random() < 0.8:
                self.coupon_rows.append({**base, "event_id": "push", "kind": "pushed", "occurred_at_ms": ms(at) + 100,
                                     "processed_at_ms": ms(at) + 100})
            if rng.random() < 0.4:
                paid = rng.choice([r for r in self.rows if r["kind"] == "earn"])
                self.coupon_rows.append({**base, "event_id": paid["event_id"], "kind": "redeemed",
                                         "occurred_at_ms": ms(at) + 200, "processed_at_ms": ms(at) + 200,
                                         "discount_fen": 500, "issuer_share_fen": 300, "merchant_share_fen": 200})
                if rng.random() < 0.3:
                    self.coupon_rows.append({**base, "event_id": f"rf{k}", "kind": "returned",
                                         "occurred_at_ms": ms(at) + 300, "processed_at_ms": ms(at) + 300,
                                         "discount_fen": -500, "issuer_share_fen": -300, "merchant_share_fen": -200})

    # ---- the answers, in plain Python ---------------------------------------------------

    def in_range(self, r: dict[str, Any], start: dt.datetime = START, end: dt.datetime = END) -> bool:
        return ms(start) <= r["occurred_at_ms"] < ms(end)

    def scoped(self, r: dict[str, Any], f: Filters) -> bool:
        return (not f.bu or r["bu_id"] == f.bu) and (not f.format or r["format"] == f.format)

    def members(self, f: Filters) -> dict[str, int]:
        first: dict[str, int] = {}
        for r in self.rows:
            if r["kind"] == "register":
                first[r["member_id"]] = min(first.get(r["member_id"], r["occurred_at_ms"]), r["occurred_at_ms"])
        return {"members": sum(1 for t in first.values() if t < ms(END)),
                "new_members": sum(1 for t in first.values() if ms(START) <= t < ms(END))}

    def activity(self, f: Filters) -> dict[str, int]:
        registered = {r["member_id"] for r in self.rows if r["kind"] == "register" and r["occurred_at_ms"] < ms(END)}
        last: dict[str, int] = {}
        for r in self.rows:
            if r["kind"] == "earn" and r["occurred_at_ms"] < ms(END) and self.scoped(r, f):
                last[r["member_id"]] = max(last.get(r["member_id"], 0), r["occurred_at_ms"])
        out = Counter({"active": 0, "normal": 0, "dormant": 0})
        for m in registered:
            idle_s = (ms(END) - last[m]) // 1000 if m in last else 10**10
            out["active" if idle_s <= f.active_days * 86_400 else "normal" if idle_s <= f.dormant_days * 86_400
                else "dormant"] += 1
        return dict(out)

    def sales(self, f: Filters) -> dict[str, int]:
        mem = [r for r in self.rows if r["kind"] in ("earn", "clawback") and self.in_range(r) and self.scoped(r, f)]
        ms_ = sum(r["amount_fen"] * (1 if r["kind"] == "earn" else -1) for r in mem)
        mp = sum(1 for r in mem if r["kind"] == "earn")
        gs = [g for g in self.guests if self.in_range(g) and self.scoped(g, f)]
        gsum = sum(g["amount_fen"] * (1 if g["type"] == "payment" else -1) for g in gs)
        gp = sum(1 for g in gs if g["type"] == "payment")
        total = ms_ + gsum
        return {"member_sales_fen": ms_, "member_payments": mp, "guest_sales_fen": gsum, "guest_payments": gp,
                "total_sales_fen": total, "member_share_bp": trunc_div(ms_ * 10000, total),
                "member_avg_ticket_fen": trunc_div(ms_, mp)}

    def repurchase(self, f: Filters) -> dict[str, int]:
        n = Counter(r["member_id"] for r in self.rows if r["kind"] == "earn" and self.in_range(r) and self.scoped(r, f))
        buyers, repeat = len(n), sum(1 for v in n.values() if v >= 2)
        return {"buyers": buyers, "repeat_buyers": repeat,
                "repurchase_bp": 0 if not buyers else repeat * 10000 // buyers}

    def lifetime_value(self, f: Filters) -> dict[str, int]:
        net: dict[str, int] = defaultdict(int)
        paid: set[str] = set()
        for r in self.rows:
            if r["kind"] in ("earn", "clawback") and r["occurred_at_ms"] < ms(END) and self.scoped(r, f):
                net[r["member_id"]] += r["amount_fen"] * (1 if r["kind"] == "earn" else -1)
                if r["kind"] == "earn":
                    paid.add(r["member_id"])
        total = sum(net[m] for m in paid)
        return {"paying_members": len(paid), "lifetime_sales_fen": total, "ltv_fen": trunc_div(total, len(paid))}

    def growth_churn(self, f: Filters) -> dict[str, int]:
        prev_start = START - (END - START)

        def buyers(a: dt.datetime, b: dt.datetime) -> set[str]:
            return {r["member_id"] for r in self.rows if r["kind"] == "earn" and self.in_range(r, a, b)
                    and self.scoped(r, f)}
        prev, cur = buyers(prev_start, START), buyers(START, END)
        churned = len(prev - cur)
        return {"previous_buyers": len(prev), "buyers": len(cur), "churned": churned, "gained": len(cur - prev),
                "churn_bp": churned * 10000 // len(prev) if prev else 0}

    def points(self, f: Filters) -> dict[str, int]:
        rng = [r for r in self.rows if self.in_range(r)]
        return {
            "issued": sum(r["points"] for r in rng if r["points"] > 0 and r["kind"] not in ("return", "reverse")
                          and self.scoped(r, f)),
            "spent": -sum(r["points"] for r in rng if r["kind"] == "redeem" and self.scoped(r, f)),
            "expired": -sum(r["points"] for r in rng if r["kind"] == "expire"),
            "clawed_back": -sum(r["points"] for r in rng if r["kind"] == "clawback" and self.scoped(r, f)),
            "outstanding": sum(r["points"] for r in self.rows if r["occurred_at_ms"] < ms(END)),
        }

    def tiers(self, f: Filters) -> list[dict[str, Any]]:
        latest: dict[str, tuple[int, str]] = {}
        for i, r in enumerate(self.rows):
            if r["occurred_at_ms"] < ms(END) and r["tier"]:
                key = (r["occurred_at_ms"], 1 if r["kind"] == "tier_change" else 0, i)
                if r["member_id"] not in latest or key > latest[r["member_id"]][0]:  # type: ignore[operator]
                    latest[r["member_id"]] = (key, r["tier"])  # type: ignore[assignment]
        c = Counter(t for _, t in latest.values())
        return [{"tier": t, "members": c[t]} for t in sorted(c)]

    def tier_movements(self, f: Filters) -> list[dict[str, Any]]:
        c = Counter((r["explain"][0]["id"].split("->")[0], r["tier"]) for r in self.rows
                    if r["kind"] == "tier_change" and self.in_range(r))
        return [{"from_tier": a, "to_tier": b, "movements": n} for (a, b), n in sorted(c.items())]

    def campaigns(self, f: Filters) -> list[dict[str, Any]]:
        agg: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            if r["kind"] != "earn" or not self.in_range(r) or not self.scoped(r, f):
                continue
            for p in r["explain"]:
                if p["rule"] == "campaign":
                    a = agg.setdefault(p["id"], {"members": set(), "payments": 0, "points": 0, "sales_fen": 0})
                    a["members"].add(r["member_id"])
                    a["payments"] += 1
                    a["points"] += p["points"]
                    a["sales_fen"] += r["amount_fen"]
        out = []
        for cid in sorted(agg):
            a = agg[cid]
            cost = a["points"] * f.point_value_fen_per_100 // 100
            out.append({"campaign": cid, "members": len(a["members"]), "payments": a["payments"],
                        "points": a["points"], "sales_fen": a["sales_fen"], "cost_fen": cost,
                        "roi_bp": a["sales_fen"] * 10000 // cost if cost else 0})
        return out

    def coupons(self, f: Filters) -> list[dict[str, Any]]:
        out = []
        for tpl in sorted({c["template"] for c in self.coupon_rows}):
            cs = [c for c in self.coupon_rows if c["template"] == tpl and self.in_range(c)]
            issued = len({c["coupon_id"] for c in cs if c["kind"] == "issued"})
            redeemed = sum(1 for c in cs if c["kind"] == "redeemed") - sum(1 for c in cs if c["kind"] == "returned")
            cost = sum(c.get("issuer_share_fen", 0) for c in cs)
            amounts = {r["event_id"]: r["amount_fen"] for r in self.rows if r["kind"] == "earn"}
            sales = sum(amounts[c["event_id"]] for c in cs if c["kind"] == "redeemed" and c["event_id"] in amounts)
            out.append({"template": tpl, "issued": issued,
                        "pushed": len({c["coupon_id"] for c in cs if c["kind"] == "pushed"}),
                        "redeemed": redeemed, "expired": 0,
                        "redemption_bp": redeemed * 10000 // issued if issued else 0,
                        "discount_fen": sum(c.get("discount_fen", 0) for c in cs),
                        "issuer_cost_fen": cost, "sales_fen": sales,
                        "roi_bp": trunc_div(sales * 10000, cost) if cost > 0 else 0})
        return out

    def parking_kpi(self, f: Filters) -> dict[str, int]:
        ss = [s for s in self.parking if ms(START) <= s["exit_ms"] < ms(END) and (not f.bu or s["car_park"] == f.bu)]
        return {"sessions": len(ss), "member_sessions": sum(1 for s in ss if s["member_id"]),
                "minutes": sum(s["minutes"] for s in ss),
                "free_minutes_cost_fen": sum(s["gross_fee_fen"] - s["fee_fen"] for s in ss),
                "points_used": sum(s["points_used"] for s in ss), "due_fen": sum(s["due_fen"] for s in ss)}

    def cross_format(self, f: Filters) -> list[dict[str, Any]]:
        per: dict[str, set[str]] = defaultdict(set)
        for r in self.rows:
            if r["kind"] == "earn" and self.in_range(r):
                per[r["member_id"]].add(r["format"])
        c: Counter[tuple[str, str]] = Counter()
        for fs in per.values():
            for a in fs:
                for b in fs:
                    if a < b:
                        c[(a, b)] += 1
        return [{"f1": a, "f2": b, "members": n} for (a, b), n in sorted(c.items())]

    def points_flow(self, f: Filters) -> list[dict[str, Any]]:
        earned: Counter[str] = Counter()
        spent: Counter[str] = Counter()
        for r in self.rows:
            if self.in_range(r) and r["format"]:
                if r["kind"] == "earn" and r["points"] > 0:
                    earned[r["format"]] += r["points"]
                elif r["kind"] == "redeem":
                    spent[r["format"]] -= r["points"]
        return [{"format": k, "earned": earned[k], "spent": spent[k]} for k in sorted(set(earned) | set(spent))]

    def daily(self, f: Filters) -> list[dict[str, Any]]:
        tz = dt.timezone(dt.timedelta(minutes=f.utc_offset_minutes))

        def day(t_ms: int) -> str:
            return dt.datetime.fromtimestamp(t_ms / 1000, tz).date().isoformat()
        out: dict[str, dict[str, Any]] = {}

        def slot(d: str) -> dict[str, Any]:
            return out.setdefault(d, {"day": d, "sales_fen": 0, "buyers": set(), "points_issued": 0,
                                      "points_spent": 0})
        for r in self.rows:
            if not (self.in_range(r) and self.scoped(r, f)):
                continue
            s = slot(day(r["occurred_at_ms"]))
            if r["kind"] == "earn":
                s["sales_fen"] += r["amount_fen"]
                s["buyers"].add(r["member_id"])
            elif r["kind"] == "clawback":
                s["sales_fen"] -= r["amount_fen"]
            if r["points"] > 0 and r["kind"] not in ("return", "reverse"):
                s["points_issued"] += r["points"]
            if r["kind"] == "redeem":
                s["points_spent"] -= r["points"]
        for g in self.guests:
            if self.in_range(g) and self.scoped(g, f):
                slot(day(g["occurred_at_ms"]))["sales_fen"] += g["amount_fen"] * (1 if g["type"] == "payment" else -1)
        return [{"day": d, "sales_fen": v["sales_fen"], "active_members": len(v["buyers"]),
                 "points_issued": v["points_issued"], "points_spent": v["points_spent"]}
                for d, v in sorted(out.items())]

    def settlement(self, f: Filters) -> list[dict[str, Any]]:
        acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in self.rows:
            if self.in_range(r) and (not f.bu or r["bu_id"] == f.bu):
                for line in r["settlement"]:
                    acc[line["account"]][0] += line["amount_fen"]
                    acc[line["account"]][1] += line["points"]
        return [{"account": a, "amount_fen": v[0], "points": v[1]} for a, v in sorted(acc.items())]


def message(rows: list[dict[str, Any]], guests: list[dict[str, Any]], parking: list[dict[str, Any]],
            coupons: list[dict[str, Any]]) -> bytes:
    """A ledger-topic message as the workers send them."""
    return orjson.dumps({"ledger": rows, "guests": guests, "parking": parking, "coupons": coupons})


@pytest.fixture(scope="module")
def history() -> History:
    return History()


@pytest.fixture(scope="module")
def store(history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerStore]:
    path: Path = tmp_path_factory.mktemp("kpi") / "chdb"
    s = LedgerStore(f"chdb://{path}")

    async def setup() -> None:
        await s.setup()
        await s.write_messages([message(history.rows, history.guests, history.parking, history.coupon_rows)])
        # A replay of part of the history (a crash re-sends rows): counted once.
        await s.write_messages([message(history.rows[:50], history.guests[:5], history.parking[:5],
                                        history.coupon_rows[:5])])
    asyncio.run(setup())
    yield s


FILTERS = [
    Filters(START, END),
    Filters(START, END, bu="mall"),
    Filters(START, END, format="hotel", active_days=7, dormant_days=20),
]


@pytest.mark.parametrize("f", FILTERS, ids=["all", "bu=mall", "format=hotel"])
def test_every_kpi_matches_an_independent_python_computation(store: LedgerStore, history: History,
                                                             f: Filters) -> None:
    got = asyncio.run(run_kpis(store.query, f))
    assert set(got) == {k.name for k in KPIS}
    expected = {
        "members": [history.members(f)], "activity": [history.activity(f)], "sales": [history.sales(f)],
        "repurchase": [history.repurchase(f)], "lifetime_value": [history.lifetime_value(f)],
        "growth_churn": [history.growth_churn(f)], "points": [history.points(f)], "tiers": history.tiers(f),
        "tier_movements": history.tier_movements(f), "campaigns": history.campaigns(f),
        "coupons": history.coupons(f), "parking": [history.parking_kpi(f)], "cross_format": history.cross_format(f),
        "points_flow": history.points_flow(f), "settlement": history.settlement(f), "daily": history.daily(f),
    }
    for name, want in expected.items():
        rows = [{k: (int(v) if isinstance(v, int) else v) for k, v in r.items()} for r in got[name]]
        assert rows == want, name
    # The data is rich enough that the figures are not trivially zero.
    assert expected["sales"][0]["member_sales_fen"] > 0 and expected["campaigns"] and expected["tier_movements"]
    assert all(c["sales_fen"] > 0 and c["roi_bp"] > 0 for c in expected["coupons"])


def ntile(n_rows: int, buckets: int = 5) -> list[int]:
    """SQL's ntile: the first n % buckets groups get one row more."""
    base, extra = divmod(n_rows, buckets)
    out: list[int] = []
    for b in range(buckets):
        out += [b + 1] * (base + (1 if b < extra else 0))
    return out


def python_segments(h: History, end: dt.datetime, rules: Any) -> list[dict[str, Any]]:
    since = ms(end - dt.timedelta(days=rules.window_days))
    feats: dict[str, dict[str, int]] = {}
    for r in h.rows:
        if r["kind"] not in ("earn", "clawback") or not since <= r["occurred_at_ms"] < ms(end):
            continue
        f = feats.setdefault(r["member_id"], {"last": 0, "frequency": 0, "monetary_fen": 0, "gross": 0, "food": 0,
                                              "sports": 0, "parking": 0})
        sign = 1 if r["kind"] == "earn" else -1
        f["monetary_fen"] += sign * r["amount_fen"]
        if r["kind"] == "earn":
            f["last"] = max(f["last"], r["occurred_at_ms"])
            f["frequency"] += 1
            f["gross"] += r["amount_fen"]
            f["food"] += r["amount_fen"] if r["category"] in rules.food_categories else 0
            f["sports"] += r["amount_fen"] if r["category"] in rules.sports_categories else 0
            f["parking"] += r["format"] == "parking"
    feats = {m: f for m, f in feats.items() if f["frequency"] > 0}
    for s in h.parking:
        if s["member_id"] in feats and since <= s["exit_ms"] < ms(end):
            feats[s["member_id"]]["parking"] += 1
    for f in feats.values():
        # ClickHouse's dateDiff('day'): calendar days between the UTC dates.
        last = dt.datetime.fromtimestamp(f["last"] / 1000, UTC).date()
        f["recency_days"] = (end.astimezone(UTC).date() - last).days
    members = sorted(feats)
    scores: dict[str, dict[str, int]] = {m: {} for m in members}
    for key, order in (("r", lambda m: (-feats[m]["recency_days"], m)), ("f", lambda m: (feats[m]["frequency"], m)),
                       ("m", lambda m: (feats[m]["monetary_fen"], m))):
        for m, bucket in zip(sorted(members, key=order), ntile(len(members)), strict=True):
            scores[m][key] = bucket
    out = []
    for m in members:
        f, sc = feats[m], scores[m]
        r_, f_, m_ = sc["r"], sc["f"], sc["m"]
        segment = ("champions" if r_ >= 4 and f_ >= 4 and m_ >= 4 else "loyal" if f_ >= 4 else
                   "promising" if r_ >= 4 and f_ <= 2 else "at_risk" if r_ <= 2 and f_ >= 3 else
                   "hibernating" if r_ <= 2 else "regular")
        tags = [t for t, ok in (("foodie", f["gross"] > 0 and f["food"] * 100 >= f["gross"] * rules.foodie_pct),
                                ("sports_lover", f["gross"] > 0 and f["sports"] * 100 >= f["gross"] * rules.sports_pct),
                                ("parker", f["parking"] >= rules.parker_visits)) if ok]
        out.append({"member_id": m, "recency_days": f["recency_days"], "frequency": f["frequency"],
                    "monetary_fen": f["monetary_fen"], "r": r_, "f": f_, "m": m_, "segment": segment, "tags": tags})
    return out


def test_segments_and_tags_match_an_independent_python_computation(store: LedgerStore, history: History) -> None:
    from streams.segments import SegmentRules, changes, refresh

    rules = SegmentRules(parker_visits=2)
    got = asyncio.run(store.query("segments/compute", rules.params(END)))
    want = python_segments(history, END, rules)
    assert [{k: (list(v) if isinstance(v, list | tuple) else v) for k, v in r.items()} for r in got] == want
    assert {r["segment"] for r in want} >= {"champions", "hibernating"} and any(r["tags"] for r in want)

    sent: list[tuple[str, bytes]] = []

    async def send(member: str, body: bytes) -> None:
        sent.append((member, body))

    async def run(end: dt.datetime) -> Any:
        return await refresh(store.query, store.insert_segments, send, rules, end)
    first = asyncio.run(run(END))
    assert first.changed == len(want) == len(sent) and first.lapsed == 0
    sent.clear()
    again = asyncio.run(run(END + dt.timedelta(seconds=1)))  # nothing changed: nothing sent
    assert (again.changed, sent) == (0, [])
    later = asyncio.run(run(END + dt.timedelta(days=200)))  # nobody paid since: everyone lapses
    assert later.lapsed == len(want)
    assert changes([], [{"member_id": "x", "segment": "lapsed", "tags": []}]) == []


def test_daily_aggregate_views_fill_as_rows_arrive(store: LedgerStore, history: History) -> None:
    """The materialized views sum every inserted block: the exact history plus the replayed
    part (which the base table collapses, and the KPI queries read with FINAL)."""
    rows = asyncio.run(store.query_sql("SELECT sum(sales_fen) AS s, sum(payments) AS p FROM daily_sales"))
    sales = [r["amount_fen"] * (1 if r["kind"] == "earn" else -1) for r in history.rows
             if r["kind"] in ("earn", "clawback")]
    replayed = [r["amount_fen"] * (1 if r["kind"] == "earn" else -1) for r in history.rows[:50]
                if r["kind"] in ("earn", "clawback")]
    assert rows[0]["s"] == sum(sales) + sum(replayed)
    assert rows[0]["p"] == sum(1 for r in history.rows if r["kind"] == "earn") + sum(
        1 for r in history.rows[:50] if r["kind"] == "earn")


def test_db_migrate_applies_what_is_new_and_is_safe_to_rerun(tmp_path: Path) -> None:
    import subprocess
    import sys

    from streams.settings import ROOT

    dsn = f"chdb://{tmp_path / 'db'}"
    cmd = [sys.executable, "-m", "streams.cli", "db", "migrate", "--dsn", dsn]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "001_ledger.sql" in first.stdout and "010_daily_aggregates.sql" in first.stdout
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing new" in again.stdout


def test_fact_views_cover_members_and_guests(store: LedgerStore, history: History) -> None:
    got = asyncio.run(store.query_sql("SELECT type, count() AS n, sum(amount_fen) AS s FROM payments GROUP BY type "
                                      "ORDER BY type"))
    want = Counter()
    sums: Counter[str] = Counter()
    for r in history.rows:
        if r["kind"] in ("earn", "clawback"):
            t = "payment" if r["kind"] == "earn" else "refund"
            want[t] += 1
            sums[t] += r["amount_fen"]
    for g in history.guests:
        want[g["type"]] += 1
        sums[g["type"]] += g["amount_fen"]
    assert [(r["type"], r["n"], r["s"]) for r in got] == [(t, want[t], sums[t]) for t in sorted(want)]
    changes = asyncio.run(store.query_sql("SELECT count() AS n FROM member_changes"))[0]["n"]
    assert changes == sum(1 for r in history.rows if r["kind"] in ("register", "tier_change"))
