"""A plain-Python reference of the core's semantics, written for clarity, not speed.

Not used in production: differential tests require the Rust core and this module to
agree exactly (statuses, points, explanations, member states), and the benchmarks
report their speed ratio. It reads the same TOML rule files (assumed valid: the
core is the one that validates them).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import tomllib
from dataclasses import dataclass
from typing import Any

import orjson

DAY_MS = 86_400_000
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
EPOCH = dt.date(1970, 1, 1)


def parse_ms(s: str) -> int:
    return int(dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(frozen=True)
class Local:
    day: int
    weekday: int
    hour: int
    year: int
    month: int
    month_index: int


def local_of(ms: int, offset_min: int) -> Local:
    lm = ms + offset_min * 60_000
    d = dt.datetime.fromtimestamp(lm / 1000, dt.UTC)
    return Local(lm // DAY_MS, d.weekday(), d.hour, d.year, d.month, d.year * 12 + d.month - 1)


class RefRules:
    def __init__(self, text: str) -> None:
        raw = tomllib.loads(text)
        self.version: str = raw["version"].strip()
        self.rounding: str = raw.get("rounding", "floor")
        self.offset: int = raw.get("utc_offset_minutes", 480)
        self.guest_credit_days: int = raw.get("guest_credit_days", 0)
        caps = raw.get("caps", {})
        self.tx_cap: int | None = caps.get("per_transaction_points")
        self.daily_cap: int | None = caps.get("per_member_daily_points")
        self.formats = {k: (v["points"], v["per_fen"]) for k, v in raw["formats"].items()}
        self.bus = {b["id"]: b for b in raw.get("business_units", [])}
        self.merchants = {m["id"]: m for m in raw.get("merchants", [])}
        self.categories: dict[str, list[dict[str, Any]]] = {}
        for c in raw.get("categories", []):
            self.categories.setdefault(c["id"], []).append(c)
        self.tiers: list[dict[str, Any]] = raw["tiers"]
        tp = raw.get("tier_policy", {})
        self.window = tp.get("window_months", 12)
        self.review_days = tp.get("review_after_days", 365)
        self.downgrade = tp.get("downgrade", "to_qualified")
        self.on_refund = tp.get("on_refund", "recheck")
        self.stacking = raw.get("campaign_policy", {}).get("stacking", "best_of")
        self.campaigns: list[dict[str, Any]] = raw.get("campaigns", [])
        self.behaviour: dict[str, Any] = raw.get("behaviour", {})
        w = raw.get("wallet", {})
        self.validity: int | None = w.get("validity_months")
        self.reminder_days: int | None = w.get("reminder_days")
        self.shortfall: str = w.get("refund_shortfall", "allow_negative")

    def return_window(self, bu: dict[str, Any], category: str) -> int:
        for r in self.categories.get(category, []):
            if r.get("formats") is None or bu["format"] in r["formats"]:
                return int(r.get("return_window_days", 0))
        return 0

    def expiry_ms(self, month: int) -> int | None:
        if self.validity is None:
            return None
        first_after = month + self.validity + 1
        day = (dt.date(first_after // 12, first_after % 12 + 1, 1) - EPOCH).days
        return day * DAY_MS - self.offset * 60_000

    def divide(self, num: int, den: int) -> int:
        if self.rounding == "floor":
            return num // den
        if self.rounding == "ceil":
            return -(-num // den)
        return (2 * num + den) // (2 * den)

    def tier_index(self, tid: str | None) -> int:
        for i, t in enumerate(self.tiers):
            if t["id"] == tid:
                return i
        return 0

    def category_of(self, merchant: str, category: str) -> str:
        m = self.merchants.get(merchant)
        return m["category"] if m else category

    def base_rate(self, bu: dict[str, Any], merchant: str, category: str) -> tuple[int, int] | None:
        rule = None
        for r in self.categories.get(category, []):
            if r.get("formats") is None or bu["format"] in r["formats"]:
                rule = r
                break
        if rule is not None and rule.get("excluded"):
            return None
        m = self.merchants.get(merchant)
        if m is not None and "points" in m:
            return (m["points"], m["per_fen"])
        if rule is not None and "points" in rule:
            return (rule["points"], rule["per_fen"])
        if "points" in bu:
            return (bu["points"], bu["per_fen"])
        return self.formats[bu["format"]]


def new_state() -> dict[str, Any]:
    return {
        "registered_at_ms": None, "birthday": None, "tags": [], "tier": None, "tier_since_ms": None,
        "review_at_ms": None, "override_tier": None, "override_until_ms": None, "qual": [], "day": 0,
        "earned_day": 0, "spend_last_day": None, "spend_streak": 0, "sign_in_last_day": None,
        "sign_in_streak": 0, "task_month": 0, "task_spend_fen": 0, "task_done": False, "review_day": 0,
        "reviews_today": 0, "referral_month": 0, "referrals_month": 0, "birthday_bonus_year": 0, "campaigns": {},
        "lots": [], "pending": [], "neg": 0, "owed": 0, "reminded_month": 0, "holds": {}, "spend_day": 0,
        "spend_by_bu": {},
    }


# ---- the wallet ----------------------------------------------------------------------

def add_to_lot(s: dict[str, Any], month: int, points: int) -> None:
    if points <= 0:
        return
    for lot in s["lots"]:
        if lot[0] == month:
            lot[1] += points
            return
    s["lots"].append([month, points])
    s["lots"].sort(key=lambda lot: lot[0])


def credit(s: dict[str, Any], points: int, month: int, pending: tuple[str, int] | None) -> None:
    if points <= 0:
        return
    repay = min(points, s["neg"])
    s["neg"] -= repay
    rest = points - repay
    if rest == 0:
        return
    if pending is not None:
        s["pending"].append({"event_id": pending[0], "release_at_ms": pending[1], "points": rest, "month": month})
    else:
        add_to_lot(s, month, rest)


def take_back(s: dict[str, Any], payment_id: str, lot_month: int | None, points: int) -> int:
    left = points
    for p in s["pending"]:
        if p["event_id"] == payment_id:
            t = min(p["points"], left)
            p["points"] -= t
            left -= t
    for lot in s["lots"]:  # what is left of the payment's own lot
        if lot[0] == lot_month:
            t = min(lot[1], left)
            lot[1] -= t
            left -= t
    for lot in reversed(s["lots"]):
        t = min(lot[1], left)
        lot[1] -= t
        left -= t
    for p in reversed(s["pending"]):
        t = min(p["points"], left)
        p["points"] -= t
        left -= t
    s["lots"] = [lot for lot in s["lots"] if lot[1] > 0]
    s["pending"] = [p for p in s["pending"] if p["points"] > 0]
    return left


def month_label(m: int) -> str:
    return f"{m // 12:04d}-{m % 12 + 1:02d}"


def wallet_check(r: RefRules, s: dict[str, Any], at: int) -> tuple[list[list[Any]], str | None]:
    parts: list[list[Any]] = []
    released = 0
    keep = []
    for p in s["pending"]:
        if p["release_at_ms"] <= at:
            released += p["points"]
            add_to_lot(s, p["month"], p["points"])
        else:
            keep.append(p)
    s["pending"] = keep
    if released > 0:
        parts.append(["released", str(released), 0])
    expired = [lot for lot in s["lots"] if (e := r.expiry_ms(lot[0])) is not None and at >= e]
    s["lots"] = [lot for lot in s["lots"] if lot not in expired]
    for lot in expired:
        parts.append(["expire", month_label(lot[0]), -lot[1]])
    notice = None
    if r.reminder_days is not None:
        for lot in s["lots"]:
            e = r.expiry_ms(lot[0])
            if lot[0] > s["reminded_month"] and e is not None and at < e and e - at <= r.reminder_days * DAY_MS:
                s["reminded_month"] = lot[0]
                notice = month_label(lot[0])
                parts.append(["reminder", notice, 0])
                break
    if not parts:
        parts.append(["nothing_due", "", 0])
    return parts, notice


def state_from_json(text: str | None) -> dict[str, Any]:
    s = new_state()
    if text:
        s.update(orjson.loads(text))
        s["qual"] = [list(b) for b in s["qual"]]
    return s


def birthday_month(s: dict[str, Any]) -> int | None:
    return int(s["birthday"][:2]) if s["birthday"] else None


def window_totals(s: dict[str, Any], month_index: int, window: int) -> tuple[int, int]:
    lo = month_index - window + 1
    p = sum(b[1] for b in s["qual"] if lo <= b[0] <= month_index)
    sp = sum(b[2] for b in s["qual"] if lo <= b[0] <= month_index)
    return p, sp


def add_qual(s: dict[str, Any], month_index: int, window: int, points: int, spend: int) -> None:
    for b in s["qual"]:
        if b[0] == month_index:
            b[1] += points
            b[2] += spend
            break
    else:
        s["qual"].append([month_index, points, spend])
        s["qual"].sort(key=lambda b: b[0])
    s["qual"] = [b for b in s["qual"] if b[0] >= month_index - window + 1]


def effective_tier(r: RefRules, s: dict[str, Any], at: int) -> dict[str, Any]:
    if s["override_tier"] is not None and s["override_until_ms"] is not None and at < s["override_until_ms"]:
        return r.tiers[r.tier_index(s["override_tier"])]
    return r.tiers[r.tier_index(s["tier"])]


def qualified_index(r: RefRules, s: dict[str, Any], month_index: int) -> int:
    p, sp = window_totals(s, month_index, r.window)
    for i in range(len(r.tiers) - 1, 0, -1):
        t = r.tiers[i]
        if (t.get("qualify_points") is not None and p >= t["qualify_points"]) or (
            t.get("qualify_spend_fen") is not None and sp >= t["qualify_spend_fen"]
        ):
            return i
    return 0


def set_tier(r: RefRules, s: dict[str, Any], i: int, at: int) -> None:
    s["tier"] = None if i == 0 else r.tiers[i]["id"]
    s["tier_since_ms"] = at
    s["review_at_ms"] = at + r.review_days * DAY_MS if i > 0 else None


def campaign_matches(c: dict[str, Any], p: dict[str, Any], s: dict[str, Any], local: Local, tier: str,
                     category: str) -> bool:
    at = p["_at"]
    if "starts_at" in c and at < parse_ms(c["starts_at"]):
        return False
    if "ends_at" in c and at >= parse_ms(c["ends_at"]):
        return False
    if p["amount_fen"] < c.get("min_amount_fen", 0):
        return False
    if "dates" in c and local.day not in {(dt.date.fromisoformat(d) - EPOCH).days for d in c["dates"]}:
        return False
    if "weekdays" in c and WEEKDAYS[local.weekday] not in [w.lower() for w in c["weekdays"]]:
        return False
    if "hours" in c and not (c["hours"][0] <= local.hour < c["hours"][1]):
        return False
    checks = [("merchants", p["merchant_id"]), ("categories", category), ("tiers", tier)]
    if any(k in c and v not in c[k] for k, v in checks):
        return False
    return not ("tags" in c and not any(t in c["tags"] for t in s["tags"]))


def campaign_wanted(r: RefRules, c: dict[str, Any], on: int) -> int:
    if "multiplier_pct" in c:
        return r.divide(on * (c["multiplier_pct"] - 100), 100)
    return int(c["bonus_points"])


def campaign_limited(c: dict[str, Any], want: int, spent: dict[str, int], s: dict[str, Any]) -> int:
    give = max(want, 0)
    if "budget_points" in c:
        give = min(give, max(c["budget_points"] - spent.get(c["id"], 0), 0))
    if "per_member_cap_points" in c:
        give = min(give, max(c["per_member_cap_points"] - s["campaigns"].get(c["id"], 0), 0))
    return give


def campaign_parts(r: RefRules, p: dict[str, Any], s: dict[str, Any], local: Local, tier: str, category: str,
                   on: int, spent: dict[str, int]) -> list[tuple[str, int]]:
    bu = r.bus[p["bu_id"]]
    matching = [
        c for c in r.campaigns
        if ("bus" not in c or bu["id"] in c["bus"]) and ("formats" not in c or bu["format"] in c["formats"])
        and campaign_matches(c, p, s, local, tier, category)
    ]
    out: list[tuple[str, int]] = []
    if r.stacking == "add":
        out = [(c["id"], campaign_limited(c, campaign_wanted(r, c, on), spent, s)) for c in matching]
    elif r.stacking == "best_of":
        best: tuple[str, int] | None = None
        for c in matching:
            give = campaign_limited(c, campaign_wanted(r, c, on), spent, s)
            if best is None or give > best[1]:
                best = (c["id"], give)
        out = [best] if best else []
    else:
        running = on
        for c in matching:
            give = campaign_limited(c, campaign_wanted(r, c, running), spent, s)
            if "multiplier_pct" in c:
                running += give
            out.append((c["id"], give))
    return [(cid, pts) for cid, pts in out if pts > 0]


def cut(parts: list[list[Any]], excess: int, rule: str) -> None:
    if excess <= 0:
        return
    left = excess
    for campaigns_pass in (True, False):
        for part in reversed(parts):
            if left == 0:
                break
            if (part[0] == "campaign") == campaigns_pass:
                take = max(min(part[2], left), 0)
                part[2] -= take
                left -= take
    parts.append([rule, f"cut {excess}", 0])


@dataclass
class Outcome:
    status: str
    points: int = 0
    field: str | None = None
    explain: list[list[Any]] = dataclasses.field(default_factory=list)
    tier_change: str | None = None
    campaigns: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    # A payment's: the lots its used points came from, the tier held before it.
    used_lots: list[list[int]] = dataclasses.field(default_factory=list)
    tier_before: str = ""


def accrue_payment(r: RefRules, p: dict[str, Any], s: dict[str, Any], spent: dict[str, int]) -> Outcome:
    if p["bu_id"] not in r.bus:
        return Outcome("rejected", field="bu_id")
    bu = r.bus[p["bu_id"]]
    at = p["_at"]
    local = local_of(at, r.offset)
    tier = effective_tier(r, s, at)
    category = r.category_of(p["merchant_id"], p["category"])
    parts: list[list[Any]] = []
    rate = r.base_rate(bu, p["merchant_id"], category)
    amount = p["amount_fen"]
    if rate is not None:
        base = r.divide(amount * rate[0], rate[1])
        with_tier = r.divide(amount * rate[0] * tier["multiplier_pct"], rate[1] * 100)
        parts.append(["base", "", base])
        if with_tier != base:
            parts.append(["tier", tier["id"], with_tier - base])
        bpct = tier.get("birthday_multiplier_pct", 100)
        if bpct > 100 and birthday_month(s) == local.month:
            parts.append(["birthday", tier["id"], r.divide(with_tier * (bpct - 100), 100)])
        for cid, pts in campaign_parts(r, p, s, local, tier["id"], category, with_tier, spent):
            parts.append(["campaign", cid, pts])
    else:
        parts.append(["excluded", category, 0])
    if r.tx_cap is not None:
        cut(parts, sum(x[2] for x in parts) - r.tx_cap, "cap")
    if r.daily_cap is not None:
        today = s["earned_day"] if s["day"] == local.day else 0
        cut(parts, sum(x[2] for x in parts) - max(r.daily_cap - today, 0), "daily_cap")
    capped = sum(x[2] for x in parts)
    consumed = []
    for x in parts:
        if x[0] == "campaign" and x[2] > 0:
            spent[x[1]] = spent.get(x[1], 0) + x[2]
            s["campaigns"][x[1]] = s["campaigns"].get(x[1], 0) + x[2]
            consumed.append((x[1], x[2]))
    if s["day"] != local.day:
        s["day"] = local.day
        s["earned_day"] = 0
    s["earned_day"] += capped
    if s["spend_day"] != local.day:
        s["spend_day"] = local.day
        s["spend_by_bu"] = {}
    s["spend_by_bu"][p["bu_id"]] = s["spend_by_bu"].get(p["bu_id"], 0) + amount
    b = r.behaviour
    if "spend_streak" in b and amount >= b["spend_streak"].get("min_amount_fen", 0):
        last = s["spend_last_day"]
        if last == local.day:
            pass
        elif last == local.day - 1:
            s["spend_streak"] += 1
        else:
            s["spend_streak"] = 1
        s["spend_last_day"] = local.day
        if s["spend_streak"] >= b["spend_streak"]["days"]:
            parts.append(["spend_streak", f"{b['spend_streak']['days']}d", b["spend_streak"]["points"]])
            s["spend_streak"] = 0
    if "monthly_task" in b:
        if s["task_month"] != local.month_index:
            s["task_month"], s["task_spend_fen"], s["task_done"] = local.month_index, 0, False
        s["task_spend_fen"] += amount
        if not s["task_done"] and s["task_spend_fen"] >= b["monthly_task"]["spend_fen"]:
            s["task_done"] = True
            parts.append(["monthly_task", "", b["monthly_task"]["points"]])
    bonus = b.get("birthday_month_bonus", 0)
    if bonus > 0 and birthday_month(s) == local.month and s["birthday_bonus_year"] != local.year:
        s["birthday_bonus_year"] = local.year
        parts.append(["birthday_bonus", "", bonus])
    total = sum(x[2] for x in parts)
    add_qual(s, local.month_index, r.window, total, amount)
    change = None
    current = r.tier_index(s["tier"])
    q = qualified_index(r, s, local.month_index)
    if q > current:
        set_tier(r, s, q, at)
        change = f"upgrade {r.tiers[current]['id']}->{r.tiers[q]['id']}"
    if s["owed"] > 0 and total > 0:
        repay = min(s["owed"], total)
        s["owed"] -= repay
        total -= repay
        parts.append(["debt", "", -repay])
    window = r.return_window(bu, category)
    credit(s, total, local.month_index, (p["event_id"], at + window * DAY_MS) if window > 0 else None)
    used = int(p.get("points_used", 0))
    used_lots = spend_used(r, s, used, at) if used > 0 else []
    return Outcome("apply", total - used, explain=parts, tier_change=change, campaigns=consumed,
                   used_lots=used_lots, tier_before=r.tiers[current]["id"])


def spend_used(r: RefRules, s: dict[str, Any], points: int, at: int) -> list[list[int]]:
    """Points used at the till (no hold here): oldest spendable lots, then below zero.
    Returns the lots they came from."""
    left = points
    used: list[list[int]] = []
    for lot in s["lots"]:
        e = r.expiry_ms(lot[0])
        if left == 0:
            break
        if e is not None and at >= e:
            continue
        t = min(lot[1], left)
        if t > 0:
            used.append([lot[0], t])
        lot[1] -= t
        left -= t
    s["lots"] = [lot for lot in s["lots"] if lot[1] > 0]
    s["neg"] += left
    return used


def give_back(s: dict[str, Any], used_lots: list[list[int]], before: int, points: int, month: int) -> None:
    """A refund's share of the points used: into their lots (oldest first, past what earlier
    refunds gave back), the rest (used below zero) credited this month."""
    skip, left = before, points
    for m, n in used_lots:
        skipped = min(skip, n)
        skip -= skipped
        t = min(n - skipped, left)
        if t > 0:
            add_to_lot(s, m, t)
            left -= t
    credit(s, left, month, None)


def apply_member_event(r: RefRules, e: dict[str, Any], s: dict[str, Any]) -> Outcome:
    at = e["_at"]
    local = local_of(at, r.offset)
    b = r.behaviour
    parts: list[list[Any]] = []
    change = None
    kind = e["type"]
    if kind in ("register", "profile"):
        if e.get("birthday"):
            s["birthday"] = e["birthday"][-5:]
        if e.get("tags") is not None:
            s["tags"] = list(e["tags"])
    if kind == "register":
        if s["registered_at_ms"] is None:
            s["registered_at_ms"] = at
            parts.append(["registration_gift", "", b.get("registration_gift", 0)])
        else:
            parts.append(["already_registered", "", 0])
    elif kind == "profile":
        parts.append(["profile", "", 0])
    elif kind == "sign_in":
        si = b.get("sign_in", {"points": 0, "streak_bonuses": []})
        if s["sign_in_last_day"] == local.day:
            parts.append(["already_signed_in_today", "", 0])
        else:
            s["sign_in_streak"] = s["sign_in_streak"] + 1 if s["sign_in_last_day"] == local.day - 1 else 1
            s["sign_in_last_day"] = local.day
            parts.append(["sign_in", "", si["points"]])
            for sb in si.get("streak_bonuses", []):
                if s["sign_in_streak"] % sb["days"] == 0:
                    parts.append(["sign_in_streak", f"{sb['days']}d", sb["points"]])
    elif kind == "referral":
        ref = b.get("referral", {"points": 0, "max_per_month": 0})
        if s["referral_month"] != local.month_index:
            s["referral_month"], s["referrals_month"] = local.month_index, 0
        if s["referrals_month"] < ref["max_per_month"]:
            s["referrals_month"] += 1
            parts.append(["referral", e["referred_member_id"], ref["points"]])
        else:
            parts.append(["referral_limit", "", 0])
    elif kind == "review":
        rv = b.get("review", {"points": 0, "max_per_day": 0})
        if s["review_day"] != local.day:
            s["review_day"], s["reviews_today"] = local.day, 0
        if s["reviews_today"] < rv["max_per_day"]:
            s["reviews_today"] += 1
            parts.append(["review", "", rv["points"]])
        else:
            parts.append(["review_limit", "", 0])
    elif kind == "tier_override":
        if e["tier"] not in [t["id"] for t in r.tiers]:
            return Outcome("rejected", field="tier")
        until = parse_ms(e["until"])
        if until <= at:
            return Outcome("rejected", field="until")
        s["override_tier"], s["override_until_ms"] = e["tier"], until
        parts.append(["override", e["tier"], 0])
    elif kind == "wallet_check":
        wparts, _notice = wallet_check(r, s, at)
        parts.extend(wparts)
        if any(x[0] == "expire" for x in wparts):
            kind = "expire"
    elif kind == "tier_review":
        due = s["review_at_ms"]
        if due is None or at < due:
            parts.append(["review_not_due", "", 0])
        else:
            current = r.tier_index(s["tier"])
            q = qualified_index(r, s, local.month_index)
            new = q if r.downgrade == "to_qualified" else max(q, max(current - 1, 0))
            set_tier(r, s, new, at)
            reason = "downgrade" if new < current else "renewal" if new == current else "upgrade"
            change = f"{reason} {r.tiers[current]['id']}->{r.tiers[new]['id']}"
    total = sum(x[2] for x in parts)
    if kind not in ("wallet_check", "expire"):
        credit(s, total, local.month_index, None)
    return Outcome("apply", total, explain=parts, tier_change=change)


def evaluate(r: RefRules, events: list[dict[str, Any] | None], applied: list[bool],
             originals: list[tuple[int, int, int, int, int, int] | None],
             members: dict[str, tuple[int, str | None]],
             budget_spent: dict[str, int]) -> tuple[list[Outcome], dict[str, dict[str, Any]]]:
    """Same contract as core_ext.evaluate_batch; `None` stands for an invalid event.
    Returns the outcomes and the touched members' final states."""
    seen: set[tuple[str, str]] = set()
    payments: dict[tuple[str, str], list[int]] = {}
    # Where and when a payment of this batch was booked (its refunds take from its lot,
    # its day's spend and its month's task); originals passed in carry no booking.
    booked: dict[tuple[str, str], tuple[str, Any]] = {}
    states: dict[str, dict[str, Any]] = {}
    touched: set[str] = set()
    spent = dict(budget_spent)
    out: list[Outcome] = []
    for e, was_applied, original in zip(events, applied, originals, strict=True):
        if e is None:
            out.append(Outcome("rejected", field="body"))
            continue
        e = {**e, "_at": parse_ms(e["occurred_at"])}
        mid = e.get("member_id")
        if mid is None:
            out.append(Outcome("guest"))
            continue
        if was_applied or (mid, e["event_id"]) in seen:
            out.append(Outcome("duplicate"))
            continue
        if mid not in states:
            states[mid] = state_from_json(members.get(mid, (0, None))[1])
        trial = copy.deepcopy(states[mid])
        trial_spent = dict(spent)
        if e["type"] == "payment":
            o = accrue_payment(r, e, trial, trial_spent)
            if o.status == "apply":
                used = int(e.get("points_used", 0))
                payments[(mid, e["event_id"])] = [e["amount_fen"], o.points + used, 0, 0, used, 0]
                booked[(mid, e["event_id"])] = (e["bu_id"], local_of(e["_at"], r.offset), o.used_lots,
                                                o.tier_before)
        elif e["type"] == "refund":
            key = (mid, e["refund_of"])
            rec = payments.get(key) or (list(original) if original else None)
            if rec is None:
                o = Outcome("rejected", field="refund_of")
            elif e["amount_fen"] > rec[0] - rec[2]:
                o = Outcome("rejected", field="amount_fen")
            else:
                claw = rec[1] * (rec[2] + e["amount_fen"]) // rec[0] - rec[3]
                returned = rec[4] * (rec[2] + e["amount_fen"]) // rec[0] - rec[5]
                payments[key] = [rec[0], rec[1], rec[2] + e["amount_fen"], rec[3] + claw, rec[4], rec[5] + returned]
                local = local_of(e["_at"], r.offset)
                paid = booked.get(key)
                short = take_back(trial, e["refund_of"], paid[1].month_index if paid else None, claw)
                if paid:
                    bu, at, _, _ = paid
                    if trial["spend_day"] == at.day and bu in trial["spend_by_bu"]:
                        trial["spend_by_bu"][bu] = max(0, trial["spend_by_bu"][bu] - e["amount_fen"])
                    if trial["task_month"] == at.month_index and not trial["task_done"]:
                        trial["task_spend_fen"] = max(0, trial["task_spend_fen"] - e["amount_fen"])
                if r.shortfall == "allow_negative":
                    trial["neg"] += short
                    taken = claw
                else:
                    trial["owed"] += short
                    taken = claw - short
                add_qual(trial, local.month_index, r.window, -claw, -e["amount_fen"])
                change = None
                if paid and r.on_refund == "recheck":
                    current = r.tier_index(trial["tier"])
                    new = max(qualified_index(r, trial, local.month_index), r.tier_index(paid[3]))
                    if new < current:
                        set_tier(r, trial, new, e["_at"])
                        change = f"refund {r.tiers[current]['id']}->{r.tiers[new]['id']}"
                explain = [["refund", e["refund_of"], -taken]]
                if taken < claw:
                    explain.append(["owed", str(claw - taken), 0])
                if returned > 0:
                    give_back(trial, paid[2] if paid else [], rec[5], returned, local.month_index)
                o = Outcome("apply", returned - taken, explain=explain, tier_change=change)
        else:
            o = apply_member_event(r, e, trial)
        if o.status == "apply":
            states[mid] = trial
            spent = trial_spent
            touched.add(mid)
            seen.add((mid, e["event_id"]))
        out.append(o)
    return out, {m: states[m] for m in touched}


def decode(body: bytes) -> dict[str, Any] | None:
    """The reference does not re-implement validation: valid bodies only."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def simple_points(r: RefRules, events: list[dict[str, Any]]) -> dict[str, int]:
    """Each member's balance after `events` from empty states (for end-to-end checks)."""
    outcomes, _ = evaluate(r, list(events), [False] * len(events), [None] * len(events), {}, {})
    balances: dict[str, int] = {}
    for e, o in zip(events, outcomes, strict=True):
        if o.status == "apply":
            balances[e["member_id"]] = balances.get(e["member_id"], 0) + o.points
    return balances
