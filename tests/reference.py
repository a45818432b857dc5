"""A plain-Python reference of the core's accrual, written for clarity, not speed.

Differential tests check that the Rust core and this module agree on every
outcome; benchmarks compare their speed. It reads the same TOML rule file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import orjson

Original = tuple[int, int, int, int]


@dataclass(frozen=True)
class RefRules:
    version: str
    rounding: str
    formats: dict[str, tuple[int, int]]
    business_units: dict[str, tuple[str, tuple[int, int] | None]]
    categories: dict[str, list[dict[str, Any]]]
    tiers: list[tuple[str, int]]

    @classmethod
    def from_toml(cls, text: str) -> RefRules:
        raw = tomllib.loads(text)
        formats = {k: (v["points"], v["per_fen"]) for k, v in raw["formats"].items()}
        bus: dict[str, tuple[str, tuple[int, int] | None]] = {}
        for b in raw.get("business_units", []):
            rate = (b["points"], b["per_fen"]) if "points" in b else None
            bus[b["id"]] = (b["format"], rate)
        cats: dict[str, list[dict[str, Any]]] = {}
        for c in raw.get("categories", []):
            cats.setdefault(c["id"], []).append(c)
        tiers = [(t["id"], t["multiplier_pct"]) for t in raw["tiers"]]
        return cls(raw["version"].strip(), raw.get("rounding", "floor"), formats, bus, cats, tiers)

    def multiplier(self, tier: str | None) -> tuple[str, int]:
        for t in self.tiers:
            if t[0] == tier:
                return t
        return self.tiers[0]

    def base_rate(self, bu: str, category: str) -> tuple[int, int] | None:
        fmt, bu_rate = self.business_units[bu]
        for rule in self.categories.get(category, []):
            if rule.get("formats") is None or fmt in rule["formats"]:
                if rule.get("excluded"):
                    return None
                return (rule["points"], rule["per_fen"])
        return bu_rate or self.formats[fmt]

    def divide(self, num: int, den: int) -> int:
        if self.rounding == "floor":
            return num // den
        if self.rounding == "ceil":
            return -(-num // den)
        return (2 * num + den) // (2 * den)


@dataclass
class RefOutcome:
    status: str  # apply | duplicate | rejected
    points: int = 0
    field: str | None = None
    row: dict[str, Any] = dc_field(default_factory=dict)


def accrue(
    rules: RefRules,
    events: list[dict[str, Any] | None],
    tiers: list[str | None],
    originals: list[Original | None],
    applied: list[bool],
    now_ms: int,
) -> list[RefOutcome]:
    """Same contract as core_ext.accrue_batch; `None` stands for an invalid event."""
    seen: set[tuple[str, str]] = set()
    payments: dict[tuple[str, str], list[int]] = {}
    out: list[RefOutcome] = []
    for ev, tier, original, was_applied in zip(events, tiers, originals, applied, strict=True):
        if ev is None:
            out.append(RefOutcome("rejected", field="body"))
            continue
        key = (ev["member_id"], ev["event_id"])
        if was_applied or key in seen:
            out.append(RefOutcome("duplicate"))
            continue
        tier_id, pct = rules.multiplier(tier)
        if ev["type"] == "payment":
            if ev["bu_id"] not in rules.business_units:
                out.append(RefOutcome("rejected", field="bu_id"))
                continue
            rate = rules.base_rate(ev["bu_id"], ev["category"])
            pts = 0 if rate is None else rules.divide(ev["amount_fen"] * rate[0] * pct, rate[1] * 100)
            payments[key] = [ev["amount_fen"], pts, 0, 0]
            kind = "earn"
        else:
            okey = (ev["member_id"], ev["refund_of"])
            rec = payments.get(okey) or (list(original) if original else None)
            if rec is None:
                out.append(RefOutcome("rejected", field="refund_of"))
                continue
            amount, earned, r_amount, r_points = rec
            if ev["amount_fen"] > amount - r_amount:
                out.append(RefOutcome("rejected", field="amount_fen"))
                continue
            total = earned * (r_amount + ev["amount_fen"]) // amount
            claw = total - r_points
            payments[okey] = [amount, earned, r_amount + ev["amount_fen"], r_points + claw]
            pts = -claw
            kind = "clawback"
        seen.add(key)
        fmt = rules.business_units.get(ev["bu_id"], ("", None))[0]
        out.append(
            RefOutcome(
                "apply",
                pts,
                row={
                    "event_id": ev["event_id"],
                    "member_id": ev["member_id"],
                    "kind": kind,
                    "points": pts,
                    "amount_fen": ev["amount_fen"],
                    "bu_id": ev["bu_id"],
                    "format": fmt,
                    "tier": tier_id,
                    "rules_version": rules.version,
                    "processed_at_ms": now_ms,
                },
            )
        )
    return out


def decode(body: bytes) -> dict[str, Any] | None:
    """The reference does not re-implement validation: valid bodies only."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
