"""The rules core on a realistic rule set: 5 business units, 240 merchants, 24
campaigns, 4 tiers, caps and behaviour rules; batches of 1,000 events (payments,
refunds, sign-ins) of 300 members with stored states.

Each benchmark first checks that the Rust core and the Python reference agree on
the batch, then times one batch call. Rust: decode + validate + evaluate (with
explanations, ledger rows and member states as JSON). Python: decode + evaluate.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import orjson
import pytest

import core_ext
from benchmarks.results import record
from tests import reference

FORMATS = {"mall": (1, 100), "hotel": (2, 100), "office": (1, 100), "convenience": (1, 100), "parking": (1, 200)}
CATEGORIES = ["fashion", "food", "beauty", "sports", "kids", "cinema", "jewelry", "electronics", "room", "dining",
              "grocery", "snacks", "tobacco", "parking", "coffee"]
N = 1_000


def realistic_rules(seed: int = 3) -> str:
    rng = random.Random(seed)
    out = ['version = "bench-1"', "utc_offset_minutes = 480", "guest_credit_days = 7",
           "[caps]", "per_transaction_points = 20000", "per_member_daily_points = 50000"]
    for f, (p, per) in FORMATS.items():
        out += [f"[formats.{f}]", f"points = {p}", f"per_fen = {per}"]
    for f in FORMATS:
        out += ["[[business_units]]", f'id = "bu-{f}"', f'format = "{f}"']
    for i in range(240):
        f = rng.choice(list(FORMATS))
        out += ["[[merchants]]", f'id = "shop-{i:03d}"', f'bu = "bu-{f}"', f'category = "{rng.choice(CATEGORIES)}"']
        if i % 10 == 0:
            out += ["points = 1", "per_fen = 300"]
    out += ["[[categories]]", 'id = "tobacco"', "excluded = true",
            "[[categories]]", 'id = "jewelry"', 'formats = ["mall"]', "points = 1", "per_fen = 200"]
    out += ["[tier_policy]", "window_months = 12", "review_after_days = 365"]
    out += ["[[tiers]]", 'id = "normal"', "multiplier_pct = 100",
            "[[tiers]]", 'id = "silver"', "multiplier_pct = 120", "qualify_points = 5000",
            "[[tiers]]", 'id = "gold"', "multiplier_pct = 150", "qualify_points = 20000",
            "birthday_multiplier_pct = 200",
            "[[tiers]]", 'id = "diamond"', "multiplier_pct = 200", "qualify_points = 80000"]
    out += ["[campaign_policy]", 'stacking = "best_of"']
    for i in range(24):
        out += ["[[campaigns]]", f'id = "camp-{i:02d}"']
        kind = f"multiplier_pct = {rng.choice([150, 200, 300])}" if i % 3 else f"bonus_points = {rng.randint(10, 200)}"
        out.append(kind)
        if i % 4 == 0:
            out.append(f'weekdays = ["{rng.choice(["sat", "sun", "fri"])}"]')
        if i % 4 == 1:
            out.append(f'formats = ["{rng.choice(list(FORMATS))}"]')
        if i % 4 == 2:
            out.append(f'categories = ["{rng.choice(CATEGORIES)}", "{rng.choice(CATEGORIES)}"]')
        if i % 4 == 3:
            out.append(f'merchants = ["shop-{rng.randrange(240):03d}", "shop-{rng.randrange(240):03d}"]')
        if i % 5 == 0:
            out.append(f"hours = [{rng.randint(8, 14)}, {rng.randint(15, 22)}]")
        if i % 6 == 0:
            out.append('tiers = ["gold", "diamond"]')
        out += [f"budget_points = {rng.randint(10_000, 1_000_000)}", "per_member_cap_points = 5000"]
    out += ["[behaviour]", "registration_gift = 200", "birthday_month_bonus = 500",
            "[behaviour.sign_in]", "points = 5", "streak_bonuses = [{ days = 7, points = 50 }]",
            "[behaviour.spend_streak]", "days = 3", "points = 100", "min_amount_fen = 1000",
            "[behaviour.monthly_task]", "spend_fen = 100000", "points = 1000"]
    return "\n".join(out) + "\n"


def realistic_batch(seed: int = 5) -> tuple[list[bytes], dict[str, tuple[int, str | None]]]:
    rng = random.Random(seed)
    members = [f"m-{i:04d}" for i in range(300)]
    stored = {m: (rng.randint(0, 50), orjson.dumps({
        "tier": rng.choice([None, "silver", "gold"]), "birthday": f"{rng.randint(1, 12):02d}-15",
        "qual": [[2026 * 12 + 10, rng.randint(0, 30_000), rng.randint(0, 3_000_000)]],
    }).decode()) for m in members}
    events: list[dict[str, Any]] = []
    paid: list[dict[str, Any]] = []
    for i in range(N):
        m = rng.choice(members)
        at = f"2026-11-{rng.randint(20, 23)}T{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}:00+08:00"
        roll = rng.random()
        if roll < 0.05 and paid:
            p = rng.choice(paid)
            events.append({**p, "event_id": f"r{i}", "type": "refund", "refund_of": p["event_id"],
                           "amount_fen": max(1, p["amount_fen"] // 3)})
        elif roll < 0.10:
            events.append({"event_id": f"s{i}", "type": "sign_in", "member_id": m, "occurred_at": at})
        else:
            shop = rng.randrange(240)
            ev = {"event_id": f"e{i}", "type": "payment", "occurred_at": at, "member_id": m,
                  "bu_id": f"bu-{rng.choice(list(FORMATS))}", "merchant_id": f"shop-{shop:03d}",
                  "category": rng.choice(CATEGORIES), "amount_fen": rng.randint(500, 300_000), "channel": "wechat"}
            events.append(ev)
            paid.append(ev)
    return [orjson.dumps(e) for e in events], stored


RULES_TEXT = realistic_rules()
RUST = core_ext.RuleSet.from_toml(RULES_TEXT, "bench.toml")
REF = reference.RefRules(RULES_TEXT)
BODIES, STORED = realistic_batch()
FLAGS = [False] * N
NONE: list[tuple[int, int, int, int, int, int] | None] = [None] * N
SPENT = {f"camp-{i:02d}": 1000 for i in range(24)}
# The hot path's records: the same events in envelopes of 100 (the ingress's group commit).
ENVELOPES = [core_ext.envelope_pack(BODIES[i:i + 100]) for i in range(0, N, 100)]
NOW_MS = 1_795_000_000_000  # 2026-11-18: every event is within the refund horizon
ROUNDS = 9
CPU_ROUNDS = 100


def rust_batch() -> core_ext.Evaluation:
    return core_ext.evaluate_batch(RUST, core_ext.EventBatch.decode(BODIES), FLAGS, NONE, STORED, SPENT, 0)


def python_batch() -> Any:
    return reference.evaluate(REF, [reference.decode(b) for b in BODIES], FLAGS, NONE, STORED, SPENT)


def _read_replies() -> list[Any]:
    """What Redis answers the read of the batch: per member, its head fields (stored
    sequence and state) and its records (none), then each budget's spent units."""
    batch = core_ext.AccrualBatch(RUST, ENVELOPES, "bench", NOW_MS, 400, 10)
    replies: list[Any] = []
    for cmd in batch.read_plan():
        parts = cmd.split(b"\r\n")
        key = parts[4].decode()
        tag = key.split("{")[1].split("}")[0]
        fields = int(parts[0][1:]) - 2
        if parts[2] == b"HGET":
            replies.append(str(SPENT.get(tag, 0)).encode())
        elif key.startswith("bench:ev:"):
            replies.append([None] * fields)
        else:
            seq, state = STORED[tag]
            replies.append([str(seq).encode(), None if state is None else state.encode()] + [None] * (fields - 2))
    return replies


READ_REPLIES = _read_replies()


def plan_batch() -> tuple[core_ext.AccrualBatch, core_ext.LedgerBlocks]:
    """The accrual's core work on one batch, as the worker does it with Redis answering at
    once: decode the envelopes, evaluate, reserve, write, settle, the ledger messages and
    their ClickHouse blocks (RowBinary)."""
    batch = core_ext.AccrualBatch(RUST, ENVELOPES, "bench", NOW_MS, 400, 10)
    batch.read_plan()
    batch.read_done(READ_REPLIES)
    reserve = batch.reserve_plan()
    batch.reserve_done([[1] * cmd.count(b"\r\nm-") for cmd in reserve])
    write = batch.write_plan()
    batch.write_done([[b"ok"]] * len(write))
    batch.settle_plan()
    batch.trim_plan()
    blocks = core_ext.ledger_blocks(batch.ledger_messages())
    return batch, blocks


def test_rust_and_reference_agree() -> None:
    outcomes = rust_batch().outcomes
    ref, _ = python_batch()
    assert [o.points for o in outcomes] == [r.points for r in ref]
    kinds = {core_ext.OutcomeKind.APPLIED: "apply", core_ext.OutcomeKind.REJECTED: "rejected",
             core_ext.OutcomeKind.HELD: "rejected", core_ext.OutcomeKind.DUPLICATE: "duplicate",
             core_ext.OutcomeKind.GUEST: "guest"}
    assert [kinds[o.kind] for o in outcomes] == [r.status for r in ref]
    assert sum(1 for o in outcomes if o.campaigns) > 50, "campaigns must be part of the load"


def test_the_plan_gives_the_references_points() -> None:
    batch, blocks = plan_batch()
    ref, _ = python_batch()
    report = batch.report()
    assert report.applied == sum(1 for r in ref if r.status == "apply")
    assert report.points_issued - report.points_debited == sum(r.points for r in ref if r.status == "apply")
    ledger = next(t for t in blocks.tables if t.table == "ledger")
    assert ledger.rows >= report.applied and not blocks.poison


def _time(fn: Any, rounds: int, clock: Any = time.perf_counter) -> list[float]:
    fn()
    out = []
    for _ in range(rounds):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def test_core_alone_vs_the_python_reference(benchmark: Any) -> None:
    """The issue's figure: events/s of the core's whole batch work (median of ROUNDS) and
    its ratio to the Python reference's evaluation of the same events."""
    rust = benchmark.pedantic(plan_batch, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert rust[0].report().applied > 0
    core_s = statistics.median(benchmark.stats.stats.data)
    ref_s = statistics.median(_time(python_batch, 5))
    eval_s = statistics.median(_time(rust_batch, ROUNDS))
    core_eps, ref_eps = N / core_s, N / ref_s
    print(f"\ncore alone (envelopes decoded, evaluated, Redis plan, ledger messages and RowBinary blocks): "
          f"{core_eps:,.0f} events/s (median of {ROUNDS}, {core_s * 1000:.2f} ms per {N})")
    print(f"  of which evaluate_batch alone: {N / eval_s:,.0f} events/s")
    print(f"python reference (decode + evaluate): {ref_eps:,.0f} events/s; ratio {core_eps / ref_eps:.1f}x")
    # This machine's wall-clock rates wander by 2x within minutes (a virtual machine's
    # neighbours): the lowest CPU time of the thread over many rounds is what compares builds.
    core_cpu = min(_time(plan_batch, CPU_ROUNDS, time.thread_time))
    ref_cpu = min(_time(python_batch, 15, time.thread_time))
    print(f"CPU time per {N} events, the lowest of {CPU_ROUNDS} rounds: core {core_cpu * 1000:.2f} ms "
          f"({N / core_cpu:,.0f} events/s of CPU), python reference (lowest of 15) {ref_cpu * 1000:.2f} ms; "
          f"ratio {ref_cpu / core_cpu:.1f}x")
    record(core_eps=round(core_eps), core_ratio=round(core_eps / ref_eps, 1),
           core_cpu_eps=round(N / core_cpu), core_cpu_ratio=round(ref_cpu / core_cpu, 1))


@pytest.mark.benchmark(group="rules-core-1000")
def test_rust_core_batch(benchmark: Any) -> None:
    assert len(benchmark(rust_batch).outcomes) == N


@pytest.mark.benchmark(group="rules-core-1000")
def test_python_reference_batch(benchmark: Any) -> None:
    outcomes, _ = benchmark(python_batch)
    assert len(outcomes) == N
