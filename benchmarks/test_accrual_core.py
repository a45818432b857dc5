"""The Rust core against the plain-Python reference on one batch of 500 events.

Each benchmark first checks that both give the same points, then times one batch:
decode + validate + accrue + ledger-row JSON for Rust; decode + accrue (no validation,
no row JSON) for the Python reference.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

import core_ext
from tests import reference
from streams.settings import ROOT

RULES_TEXT = (ROOT / "rules" / "demo.toml").read_text()
RUST = core_ext.RuleSet.from_toml(RULES_TEXT, "demo.toml")
REF = reference.RefRules.from_toml(RULES_TEXT)
N = 500


def make_batch(n: int = N, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    paid: list[dict[str, Any]] = []
    for i in range(n):
        if paid and i % 20 == 0:
            p = paid[rng.randrange(len(paid))]
            out.append(
                orjson.dumps({**p, "event_id": f"r{i}", "type": "refund", "refund_of": p["event_id"], "amount_fen": 1})
            )
            continue
        ev = {
            "event_id": f"e{i}",
            "type": "payment",
            "occurred_at": "2026-11-23T10:00:00+08:00",
            "member_id": f"m-{rng.randrange(200)}",
            "bu_id": rng.choice(["sh-mall", "sh-hotel", "sh-cvs"]),
            "merchant_id": "shop-1",
            "category": rng.choice(["fashion", "food", "jewelry", "tobacco"]),
            "amount_fen": rng.randint(100, 500_000),
            "channel": "wechat",
        }
        paid.append(ev)
        out.append(orjson.dumps(ev))
    return out


BODIES = make_batch()
TIERS: list[str | None] = [None] * N
ORIGINALS: list[tuple[int, int, int, int] | None] = [None] * N
APPLIED = [False] * N


def rust_batch() -> list[Any]:
    return core_ext.accrue_batch(RUST, core_ext.PaymentBatch.decode(BODIES), TIERS, ORIGINALS, APPLIED, 0)


def python_batch() -> list[Any]:
    return reference.accrue(REF, [reference.decode(b) for b in BODIES], TIERS, ORIGINALS, APPLIED, 0)


def test_same_points() -> None:
    assert [o[1] for o in rust_batch()] == [o.points for o in python_batch()]


@pytest.mark.benchmark(group="accrual-500")
def test_rust_core(benchmark: Any) -> None:
    out = benchmark(rust_batch)
    assert len(out) == N


@pytest.mark.benchmark(group="accrual-500")
def test_python_reference(benchmark: Any) -> None:
    out = benchmark(python_batch)
    assert len(out) == N
