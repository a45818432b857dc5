"""Random sequences of earn / redeem / reverse / refund / expire through the Rust
core: the balance always equals the sum of the ledger rows and the wallet (lots +
pending - negative), no lot is spent twice, and spending takes the oldest lots first."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import core_ext
from tests import reference
from tests.fixtures import rules_toml

RULES_TEXT = rules_toml("""
version = "prop-1"
utc_offset_minutes = 480
""", "mall", "normal_tier", tail="""
[[categories]]
id = "electronics"
points = 2
per_fen = 100
return_window_days = 7
[wallet]
validity_months = 2
refund_shortfall = "SHORTFALL"
""").replace("SHORTFALL", "allow_negative")
RULES = core_ext.RuleSet.from_toml(RULES_TEXT, "prop.toml")
REF = reference.RefRules(RULES_TEXT)

DAY_MS = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21


def wallet_total(state: dict[str, Any]) -> int:
    return (sum(lot[1] for lot in state.get("lots", [])) + sum(p["points"] for p in state.get("pending", []))
            - state.get("neg", 0))


class Wallet:
    def __init__(self) -> None:
        self.state: str | None = None
        self.balance = 0
        self.ledger = 0
        self.payments: dict[str, tuple[int, int, int, int, int, int]] = {}
        self.redemptions: dict[str, str] = {}
        self.reversed: set[str] = set()
        self.credited: dict[int, int] = {}
        self.spent: dict[int, int] = {}
        self.n = 0
        self.members_points = 0
        self.pool_points = 0

    def event(self, body: dict[str, Any], original: tuple[int, int, int, int, int, int] | None = None
              ) -> core_ext.EventOutcome:
        batch = core_ext.EventBatch.decode([orjson.dumps(body)])
        ev = core_ext.evaluate_batch(RULES, batch, [False], [original], {"m": (0, self.state)}, {}, 0)
        if ev.members:
            self.state = ev.members[0].state_json
        return ev.outcomes[0]

    def move(self, rows_json: str, points: int) -> None:
        rows = orjson.loads(rows_json)
        assert sum(r["points"] for r in rows) == points
        self.balance += points
        self.ledger += sum(r["points"] for r in rows)
        lines = [line for r in rows for line in r.get("settlement", [])]
        # Every event's settlement lines balance, in fen and in points...
        assert sum(line["amount_fen"] for line in lines) == 0
        assert sum(line["points"] for line in lines) == 0
        # ...and the members' side of the points pool moves exactly with the balance,
        # so the pool's position is always -(issued - spent - expired).
        self.members_points += sum(line["points"] for line in lines if line["account"] == "members")
        self.pool_points += sum(line["points"] for line in lines if line["account"] == "pool")
        if rows[0]["kind"] == "earn":
            paid = -sum(line["amount_fen"] for line in lines if line["account"] == "gateway")
            assert paid == rows[0]["amount_fen"], "the split must add up to the paid amount"

    def check(self) -> None:
        state = orjson.loads(self.state or "{}")
        assert wallet_total(state) == self.balance == self.ledger == self.members_points == -self.pool_points
        assert all(lot[1] > 0 for lot in state.get("lots", []))
        for month, spent in self.spent.items():
            assert spent <= self.credited.get(month, 0), "a lot was spent beyond what it held"


@st.composite
def operations(draw: Any) -> list[tuple[Any, ...]]:
    return draw(st.lists(st.one_of(
        st.tuples(st.just("earn"), st.integers(1, 200_000), st.sampled_from(["fashion", "electronics"]),
                  st.integers(0, 100), st.sampled_from([0, 0, 0, 50, 700])),
        st.tuples(st.just("redeem"), st.integers(1, 3000), st.integers(0, 100)),
        st.tuples(st.just("reverse"), st.integers(0, 20)),
        st.tuples(st.just("refund"), st.integers(0, 20), st.integers(1, 100)),
        st.tuples(st.just("check"), st.integers(0, 150)),
    ), min_size=1, max_size=40))


@settings(max_examples=300, deadline=None)
@given(operations())
def test_random_wallet_sequences_keep_every_invariant(ops: list[tuple[Any, ...]]) -> None:
    w = Wallet()
    day = 0
    for op in ops:
        w.n += 1
        if op[0] == "earn":
            day += op[3] // 10
            at = T0 + day * DAY_MS
            body = {"event_id": f"p{w.n}", "type": "payment", "member_id": "m", "bu_id": "mall",
                    "merchant_id": "s", "category": op[2], "amount_fen": op[1], "channel": "w",
                    "occurred_at": _iso(at)}
            if op[4]:
                body["points_used"] = op[4]
            held_before = _by_month(w.state)
            out = w.event(body)
            assert out.kind == core_ext.OutcomeKind.APPLIED and out.rows_json is not None
            w.move(out.rows_json, out.points)
            w.payments[f"p{w.n}"] = (op[1], out.record_points, 0, 0, out.used_points, 0)
            for month, pts in _by_month(w.state).items():
                w.credited[month] = w.credited.get(month, 0) + max(0, pts - held_before.get(month, 0))
        elif op[0] == "redeem":
            day += op[2] // 10
            before = orjson.loads(w.state or "{}")
            status, new_state, rows, answer = core_ext.redeem(
                RULES, w.state, f"r{w.n}", orjson.dumps({"member_id": "m", "bu_id": "mall",
                                                         "kind": "mall_exchange", "points": op[1]}),
                T0 + day * DAY_MS)
            if status == "insufficient":
                assert orjson.loads(answer)["available"] < op[1]
                continue
            used = [lot["points"] for lot in orjson.loads(answer)["lots"]]
            assert sum(used) == op[1]
            row = orjson.loads(rows)[0]
            # FIFO: no spendable lot older than the newest one used is left.
            now = T0 + day * DAY_MS
            newest_used = max(month for month, _ in row["lots"])
            for month, _pts in orjson.loads(new_state or "{}").get("lots", []):
                expiry = REF.expiry_ms(month)
                if expiry is None or now < expiry:
                    assert month >= newest_used, (month, row["lots"])
            del before
            for month, pts in row["lots"]:
                w.spent[month] = w.spent.get(month, 0) + pts
            w.state = new_state
            w.move(rows, -op[1])
            w.redemptions[f"r{w.n}"] = rows
        elif op[0] == "reverse" and w.redemptions:
            rid = sorted(w.redemptions)[op[1] % len(w.redemptions)]
            if rid in w.reversed:
                continue
            new_state, rows, answer = core_ext.reverse_redemption(RULES, w.state, w.redemptions[rid],
                                                                  T0 + day * DAY_MS)
            for month, pts in orjson.loads(rows)[0]["lots"]:
                w.spent[month] -= pts
            w.state = new_state
            w.move(rows, orjson.loads(answer)["points"])
            w.reversed.add(rid)
        elif op[0] == "refund" and w.payments:
            pid = sorted(w.payments)[op[1] % len(w.payments)]
            amount, pts, refunded, clawed, used, returned = w.payments[pid]
            left = amount - refunded
            if left == 0:
                continue
            part = max(1, left * op[2] // 100)
            body = {"event_id": f"{pid}-rf{w.n}", "type": "refund", "member_id": "m", "bu_id": "mall",
                    "merchant_id": "s", "category": "fashion", "amount_fen": part, "channel": "w",
                    "refund_of": pid, "occurred_at": _iso(T0 + day * DAY_MS)}
            held_before = _by_month(w.state)
            out = w.event(body, (amount, pts, refunded, clawed, used, returned))
            assert out.kind == core_ext.OutcomeKind.APPLIED and out.rows_json is not None
            # Used points a refund gives back are new points in this month's lot.
            for month, held in _by_month(w.state).items():
                w.credited[month] = w.credited.get(month, 0) + max(0, held - held_before.get(month, 0))
            w.move(out.rows_json, out.points)
            w.payments[pid] = (amount, pts, refunded + part, clawed + out.clawback_points, used,
                               returned + out.returned_points)
        elif op[0] == "check":
            day += op[1]
            out = w.event({"event_id": f"c{w.n}", "type": "wallet_check", "member_id": "m",
                           "occurred_at": _iso(T0 + day * DAY_MS)})
            assert out.kind == core_ext.OutcomeKind.APPLIED and out.rows_json is not None
            w.move(out.rows_json, out.points)
        w.check()
    # Every payment fully refunded claws back exactly what it earned, never more.
    for amount, pts, refunded, clawed, used, returned in w.payments.values():
        assert clawed <= pts and returned <= used
        if refunded == amount:
            assert (clawed, returned) == (pts, used)


def _by_month(state_json: str | None) -> dict[int, int]:
    """Points held per earning month: lots and pending."""
    state = orjson.loads(state_json or "{}")
    out: dict[int, int] = {}
    for month, pts in state.get("lots", []):
        out[month] = out.get(month, 0) + pts
    for p in state.get("pending", []):
        out[p["month"]] = out.get(p["month"], 0) + p["points"]
    return out


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
