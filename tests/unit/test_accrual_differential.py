"""The Rust core against the plain-Python reference, on generated batches."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

import core_ext
from tests import reference
from streams.settings import ROOT

RULES_TEXT = (ROOT / "rules" / "demo.toml").read_text()
RUST = core_ext.RuleSet.from_toml(RULES_TEXT, "demo.toml")
REF = reference.RefRules.from_toml(RULES_TEXT)

MEMBERS = ["m-1", "m-2", "m-3"]
BUS = ["sh-mall", "sh-hotel", "sh-cvs", "sh-park", "closed"]
CATEGORIES = ["fashion", "jewelry", "tobacco", "room", "parking"]


@st.composite
def batches(draw: Any) -> tuple[list[bytes], list[str | None], list[Any], list[bool]]:
    n = draw(st.integers(1, 40))
    bodies: list[bytes] = []
    tiers: list[str | None] = []
    originals: list[Any] = []
    applied: list[bool] = []
    payment_ids: list[tuple[str, str]] = []
    for i in range(n):
        member = draw(st.sampled_from(MEMBERS))
        kind = draw(st.sampled_from(["payment", "payment", "refund", "dup"]))
        if kind == "dup" and bodies:
            bodies.append(draw(st.sampled_from(bodies)))
            tiers.append(draw(st.sampled_from([None, "gold"])))
            originals.append(None)
            applied.append(False)
            continue
        ev: dict[str, Any] = {
            "event_id": f"e{i}",
            "type": "payment",
            "occurred_at": "2026-11-23T10:00:00+08:00",
            "member_id": member,
            "bu_id": draw(st.sampled_from(BUS)),
            "merchant_id": "s1",
            "category": draw(st.sampled_from(CATEGORIES)),
            "amount_fen": draw(st.integers(1, 10**9)),
            "channel": "wechat",
        }
        original = None
        if kind == "refund":
            ev["type"] = "refund"
            ev["bu_id"] = "sh-mall"
            mine = [p for m, p in payment_ids if m == member]
            if mine and draw(st.booleans()):
                ev["refund_of"] = draw(st.sampled_from(mine))
            else:
                ev["refund_of"] = f"stored-{i}"
                if draw(st.booleans()):
                    amount = draw(st.integers(1, 10**9))
                    refunded = draw(st.integers(0, amount))
                    pts = draw(st.integers(0, 10**7))
                    original = (amount, pts, refunded, pts * refunded // amount)
            ev["amount_fen"] = draw(st.integers(1, 10**9))
        else:
            payment_ids.append((member, ev["event_id"]))
        bodies.append(orjson.dumps(ev))
        tiers.append(draw(st.sampled_from([None, "normal", "silver", "gold", "diamond", "bogus"])))
        originals.append(original)
        applied.append(draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else False)
    return bodies, tiers, originals, applied


@settings(max_examples=300, deadline=None)
@given(batches())
def test_rust_matches_reference(case: tuple[list[bytes], list[str | None], list[Any], list[bool]]) -> None:
    bodies, tiers, originals, applied = case
    rust = core_ext.accrue_batch(RUST, core_ext.PaymentBatch.decode(bodies), tiers, originals, applied, 99)
    ref = reference.accrue(REF, [reference.decode(b) for b in bodies], tiers, originals, applied, 99)
    assert len(rust) == len(ref)
    for (status, points, row, _of, _amount, _claw, field, _reason), expected in zip(rust, ref, strict=True):
        assert status == expected.status
        assert points == expected.points
        if status == "rejected":
            assert field == expected.field
        if status == "apply":
            got = orjson.loads(row)
            for key, value in expected.row.items():
                assert got[key] == value, key


def test_one_batch_call_handles_hundreds_of_events() -> None:
    bodies = [
        orjson.dumps(
            {
                "event_id": f"e{i}",
                "type": "payment",
                "occurred_at": "2026-11-23T10:00:00+08:00",
                "member_id": f"m-{i % 50}",
                "bu_id": "sh-hotel",
                "merchant_id": "s1",
                "category": "room",
                "amount_fen": 10_000 + i,
                "channel": "alipay",
            }
        )
        for i in range(500)
    ]
    out = core_ext.accrue_batch(
        RUST, core_ext.PaymentBatch.decode(bodies), [None] * 500, [None] * 500, [False] * 500, 0
    )
    assert [o[1] for o in out] == [(10_000 + i) * 2 // 100 for i in range(500)]
