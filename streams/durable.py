"""What a member owns, by kind, and where each kind is durable (docs/reliability.md, "Where
each fact is durable"): `loyalty reconcile` compares Redis with the durable facts per kind,
`loyalty rebuild` restores them, and the demo and tests compare members kind by kind."""

from __future__ import annotations

from typing import Any

#: The member state's fields (core_ext/src/state.rs), by the kind of fact they are. All of
#: them travel whole in `member_states` (every member write sends the state it leaves).
STATE_KINDS: dict[str, tuple[str, ...]] = {
    "points and lots": ("lots", "pending", "neg", "owed", "earned_recent", "campaigns", "day", "earned_day"),
    "tier and override": ("tier", "tier_since_ms", "review_at_ms", "override_tier", "override_until_ms", "qual",
                          "review_day", "reviews_today"),
    "coupons": ("coupons", "birthday_coupon_year", "reminded_month"),
    "profile, tags and segments": ("registered_at_ms", "birthday", "tags", "segment_tags", "segment",
                                   "profile_fields", "profile_rewarded", "referral_month", "referrals_month",
                                   "referrals_total", "birthday_bonus_year"),
    "holds": ("holds",),
    "engagement (plans, games, streaks, tasks, boards)": (
        "plans", "game_plays", "cards", "sign_in_last_day", "sign_in_streak", "task_month", "task_spend_fen",
        "task_done", "spend_last_day", "spend_streak", "boards"),
    "stored value": ("sv_fen",),
    "partner exchanges": ("exchanges", "exchange_days"),
    "trigger history (last visit, formats, spend by day)": ("last_paid_ms", "formats_seen", "spend_days",
                                                            "spend_day", "spend_by_bu"),
    "scheduled campaigns reached, pushes under the frequency cap": ("campaigns_reached", "pushes_at"),
    "points mall, receipts and members' events": ("mall_bought", "orders", "receipts", "purchases",
                                                  "receipts_auto", "signups", "no_show_until_ms"),
}


def state_kinds(extra_fields: set[str]) -> dict[str, tuple[str, ...]]:
    """STATE_KINDS, plus "other state fields" for any field a newer core writes that no kind
    names yet (so nothing goes unchecked)."""
    known = {f for fields in STATE_KINDS.values() for f in fields}
    extra = tuple(sorted(extra_fields - known))
    return {**STATE_KINDS, **({"other state fields": extra} if extra else {})}


def kind_parts(state: dict[str, Any] | None, fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields of one kind that a state has."""
    return {} if state is None else {f: state[f] for f in fields if f in state}
