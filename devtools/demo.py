"""A simulated mall day through the whole pipeline, and the report it prints (over 400
lines: the day's traffic, the evening's engagement and the report's checks are one script).

Seeded, so the same seed sends the same day: payments across the group's formats,
members of every tier, gateway retries (duplicates), refunds (full and partial),
bodies a gateway should never send, forged signatures and unknown business units.

Over 400 lines on purpose: the day's generator and the report's checks are one story
(every line of the report is checked against what the generator sent), read top to bottom.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from devtools import recovery_check
from devtools.gateways import simulators
from devtools.workers import (
    WebhookReceiver,
    WorkerProcess,
    post_signed_many,
    read_dead_letters,
    remove_run_data,
    send_callbacks,
    send_callbacks_in_order,
)
from streams.app import load_rules
from streams.settings import ROOT, Settings

DAY = "2026-11-21"
DAY_AFTER = "2026-11-22"
SALON = "wine-salon"
NUDGE = "morning-nudge"
THANKS = "thank-you"
CATEGORIES = {
    "mall": ["fashion", "fashion", "food", "food", "beauty", "sports", "kids", "cinema", "jewelry"],
    "hotel": ["room", "dining", "spa"],
    "office": ["canteen", "coffee"],
    "convenience": ["grocery", "snacks", "tobacco", "gift_card"],
    "parking": ["parking"],
}
# (min, max) amount in fen and relative traffic of each format.
AMOUNTS = {
    "mall": (1_500, 150_000),
    "hotel": (30_000, 200_000),
    "office": (1_500, 6_000),
    "convenience": (500, 5_000),
    "parking": (500, 6_000),
}
TRAFFIC = {"mall": 60, "hotel": 5, "office": 10, "convenience": 20, "parking": 5}
CHANNELS = ["wechat", "wechat", "alipay", "alipay", "unionpay", "stored_value"]


@dataclass
class DemoDay:
    payments: list[bytes] = field(default_factory=list)
    duplicates: list[bytes] = field(default_factory=list)
    bad_bodies: list[bytes] = field(default_factory=list)
    forged: list[bytes] = field(default_factory=list)
    refunds: list[bytes] = field(default_factory=list)
    registrations: list[bytes] = field(default_factory=list)
    late_registrations: list[bytes] = field(default_factory=list)
    sign_ins: list[bytes] = field(default_factory=list)


def _time(rng: random.Random, start_s: int, end_s: int) -> tuple[int, str]:
    s = rng.randint(start_s, end_s)
    return s, f"{DAY}T{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}+08:00"


def generate_day(seed: int, n_payments: int, n_members: int, business_units: list[tuple[str, str]]) -> DemoDay:
    rng = random.Random(seed)
    day = DemoDay()
    members = [f"m-{i:05d}" for i in range(1, n_members + 1)]
    # Most members registered before the day (with their WeChat openid); some pay as
    # guests by openid and register in the evening, which credits those payments.
    late = set(rng.sample(members, k=max(1, n_members // 20)))
    for m in members:
        reg = orjson.dumps({
            "event_id": f"reg-{m}", "type": "register", "member_id": m,
            "occurred_at": f"{DAY}T{'21' if m in late else '08'}:30:00+08:00",
            "birthday": f"19{rng.randint(60, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "external_ids": [{"kind": "wechat", "id": f"o-{m}"}],
        })
        (day.late_registrations if m in late else day.registrations).append(reg)
        if rng.random() < 0.3:
            day.sign_ins.append(orjson.dumps({"event_id": f"signin-{m}-{DAY}", "type": "sign_in", "member_id": m,
                                              "occurred_at": f"{DAY}T09:{rng.randint(0, 59):02d}:00+08:00"}))
    by_format: dict[str, list[str]] = {}
    for bu, fmt in business_units:
        by_format.setdefault(fmt, []).append(bu)
    formats = [f for f in TRAFFIC if f in by_format]
    events: list[tuple[int, dict[str, Any]]] = []
    for i in range(n_payments):
        fmt = rng.choices(formats, weights=[TRAFFIC[f] for f in formats])[0]
        bu = rng.choice(by_format[fmt])
        lo, hi = AMOUNTS[fmt]
        secs, at = _time(rng, 10 * 3600, 22 * 3600)
        events.append(
            (
                secs,
                {
                    "event_id": f"{DAY}-tx-{seed}-{i:06d}",
                    "type": "payment",
                    "occurred_at": at,
                    "member_id": rng.choice(members),
                    "bu_id": bu,
                    "merchant_id": f"{bu}-shop-{rng.randint(1, 40 if fmt == 'mall' else 4):02d}",
                    "category": rng.choice(CATEGORIES[fmt]),
                    "amount_fen": rng.randint(lo, hi),
                    "channel": rng.choice(CHANNELS),
                },
            )
        )
    events.sort(key=lambda e: e[0])
    payments = [e for _, e in events]
    for p in payments:
        # A tenth pay by openid (resolved to the member at the ingress); late
        # registrants always do, so they are guests until they register.
        if p["member_id"] in late or rng.random() < 0.1:
            p["payer"] = {"kind": "wechat", "id": f"o-{p.pop('member_id')}"}
    day.payments = [orjson.dumps(e) for e in payments]
    # Events the rules refuse: a business unit that is not in the rule set.
    for k in range(5):
        secs, at = _time(rng, 10 * 3600, 22 * 3600)
        day.payments.append(
            orjson.dumps(
                {**payments[k], "event_id": f"{DAY}-tx-{seed}-x{k}", "bu_id": "closed-store", "occurred_at": at}
            )
        )
    day.duplicates = rng.sample(day.payments, k=max(1, n_payments * 3 // 100))
    members_payments = [p for p in payments if "member_id" in p]
    for k, p in enumerate(rng.sample(members_payments, k=max(1, n_payments // 20))):
        full = k % 2 == 0
        amount = p["amount_fen"] if full else rng.randint(1, p["amount_fen"] - 1)
        day.refunds.append(
            orjson.dumps(
                {
                    **p,
                    "event_id": f"{p['event_id']}-rf",
                    "type": "refund",
                    "refund_of": p["event_id"],
                    "amount_fen": amount,
                }
            )
        )
    for k in range(3):  # refunds of payments that never happened
        day.refunds.append(
            orjson.dumps(
                {
                    **payments[k],
                    "event_id": f"{DAY}-rf-ghost-{k}",
                    "type": "refund",
                    "refund_of": f"{DAY}-tx-ghost-{k}",
                    "amount_fen": 100,
                }
            )
        )
    bad_makers = [
        lambda p: {k: v for k, v in p.items() if k != "member_id"},
        lambda p: {**p, "amount_fen": p["amount_fen"] / 100},
        lambda p: {**p, "amount_fen": -p["amount_fen"]},
        lambda p: {**p, "type": "chargeback"},
        lambda p: {**p, "occurred_at": "21/11/2026 10:00"},
    ]
    for k in range(max(5, n_payments // 100)):
        p = rng.choice(members_payments)
        day.bad_bodies.append(orjson.dumps(bad_makers[k % len(bad_makers)](p)))
    day.bad_bodies.append(b'{"event_id": "truncated", "amount_fen": 12')
    day.forged = [orjson.dumps({**rng.choice(members_payments), "amount_fen": 99_999_999}) for _ in range(3)]
    return day


def _member_lane(event: dict[str, Any]) -> str:
    """The member a demo callback is for: its member id, or the one its openid (`o-<member>`) names."""
    return str(event.get("member_id") or (event.get("payer") or {}).get("id", "").removeprefix("o-"))


def _settled(worker: WorkerProcess) -> bool:
    """Every callback Kafka took (and every credited guest payment, and every member event the
    worker's schedules sent: wallet checks, tier reviews) has been processed."""
    m = worker.metrics()
    done = (m["events_applied_total"] + m["events_duplicate_total"] + m["events_rejected_total"]
            + m["events_guest_total"] + m["refunds_held_total"])
    return done >= (m["callbacks_accepted_total"] + m["guest_payments_credited_total"] + m["refunds_released_total"]
                    + m.get("scheduled_events_sent_total", 0))


def _settled_in_ledger(worker: WorkerProcess, http_ops: int, what: str) -> None:
    """Until every event sent is processed and the ledger in ClickHouse has them all, with
    the `http_ops` operations that write ledger rows of their own."""
    worker.wait_until(lambda: _settled(worker), timeout=300, what=f"{what}'s events to be processed")
    applied = worker.metrics()["events_applied_total"]
    worker.wait_until(
        lambda: worker.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= applied + http_ops,
        timeout=300,
        what=f"{what}'s ledger rows in ClickHouse",
    )


def _counts_at_rest(worker: WorkerProcess, http_ops: int, timeout_s: float = 60.0) -> tuple[dict[str, int], Any]:
    """The worker's counters and the ledger's totals read at one moment of rest: the
    worker's own timers (wallet checks, tier reviews) may send and apply an event between two
    reads, so both are read again, each time after every consumed partition caught up, until
    neither the applied nor the scheduled count moved across the ledger's read and the ledger
    has every applied event (or the time is up: the last reads, as they are)."""
    deadline = time.monotonic() + timeout_s
    while True:
        worker.wait_caught_up()
        m = worker.metrics()
        _, totals = worker.get("/v1/admin/ledger/totals", admin=True)
        again = worker.metrics()
        still = all(again.get(k, 0) == m.get(k, 0) for k in ("events_applied_total", "scheduled_events_sent_total"))
        if (still and int(totals.get("events", 0)) == m["events_applied_total"] + http_ops) \
                or time.monotonic() > deadline:
            return m, totals
        time.sleep(0.5)


def _fmt(n: int) -> str:
    return f"{n:,}"


def run_demo(events: int, members: int, seed: int, concurrency: int) -> int:
    settings = Settings.from_env()
    rules = load_rules(settings.rules_path)
    run_id = f"demo-{seed}-{int(time.time())}"
    data_root = ROOT / ".local" / "data" / "demo"
    shutil.rmtree(data_root, ignore_errors=True)  # one demo's store at a time
    remove_run_data(settings.kafka_bootstrap, settings.redis_url, "demo-")  # and its topics and keys
    # Simulated WeChat Pay and Alipay, with test keys this worker trusts.
    wx, ali, gateway_env = simulators(data_root / run_id / "gateway-keys")
    # The members' messaging webhook: a local receiver that checks each push's signature.
    push_secret = secrets.token_hex(16)
    receiver = WebhookReceiver(push_secret).start()
    push_env = {"LOYALTY_PUSH_WEBHOOK_URL": receiver.url, "LOYALTY_PUSH_SECRET": push_secret}
    # The demo replays a fixed day: the ingress's window on occurred_at reaches back to it.
    days_back = (dt.date.today() - dt.date.fromisoformat(DAY)).days + 2
    window_env = {"LOYALTY_OCCURRED_MAX_AGE_DAYS": str(max(400, days_back))}
    # The evening's members' event (a salon an hour from now): the rules in force plus it.
    rules_env: dict[str, str] = {}
    if settings.rules_path.exists():
        (data_root / run_id).mkdir(parents=True, exist_ok=True)
        with_event = data_root / run_id / "rules.toml"
        soon = dt.datetime.now(dt.UTC).replace(microsecond=0)
        with_event.write_text(settings.rules_path.read_text() + f"""
# The demo's members' event: 12 seats for 300 points, an hour from now (doors open).
[[member_events]]
id = "{SALON}"
name = "Members' wine salon"
capacity = 12
points = 300
starts_at = "{(soon + dt.timedelta(hours=1)).isoformat()}"
ends_at = "{(soon + dt.timedelta(hours=3)).isoformat()}"
no_show_ban_days = 30

# The next morning's scheduled campaigns (docs/marketing.md), on the demo's clock.
[[scheduled_campaigns]]
id = "{NUDGE}"
name = "Points mall nudge"
every = "day"
at = "09:00"
notice = "You have 2,000 points or more: the points mall has something for you"
audience = {{ min_points = 2000 }}

[[scheduled_campaigns]]
id = "{THANKS}"
name = "A coffee for our silver and gold members"
every = "once"
at = "{DAY_AFTER}T09:30:00+08:00"
coupon = "hotel-coffee"
audience = {{ tiers = ["silver", "gold", "diamond"] }}
""")
        rules_env = {"LOYALTY_RULES": str(with_event)}
    # The scheduler's clock: the day itself until the demo moves it to the next morning.
    clock_file = data_root / run_id / "clock"
    clock_file.parent.mkdir(parents=True, exist_ok=True)
    clock_file.write_text(f"{DAY}T08:00:00+08:00")
    rules_env["LOYALTY_CLOCK_FILE"] = str(clock_file)
    rules_env["LOYALTY_SCHEDULE_INTERVAL"] = "1"
    worker = WorkerProcess(run_id=run_id, data_dir=data_root / run_id,
                           extra_env={**gateway_env, **push_env, **window_env, **rules_env})
    day = generate_day(seed, events, members, rules.business_units)
    print(
        f"demo: {DAY}, seed {seed}: {len(day.payments)} payments, {len(day.refunds)} refunds, "
        f"{len(day.duplicates)} gateway retries, {len(day.bad_bodies)} bad bodies, "
        f"{len(day.forged)} forged signatures, {members} members",
        flush=True,
    )
    print(f"demo: starting a worker (run {run_id}, log {worker.data_dir / 'worker.log'})", flush=True)
    worker.start()
    try:
        return asyncio.run(_drive(worker, settings, day, concurrency, (wx, ali, seed, members), receiver))
    finally:
        worker.stop()
        receiver.stop()


def _gateway_notifications(worker: WorkerProcess, gateways: tuple[Any, Any, int, int],
                           n: int) -> list[tuple[int, dict[str, Any]]]:
    """`n` WeChat Pay and `n` Alipay notifications in the gateways' own formats, each sent
    twice (the gateway's retry); results as (status, {"event_id": ...}) like callbacks."""
    wx, ali, seed, members = gateways
    rng = random.Random(seed + 1)
    out: list[tuple[int, dict[str, Any]]] = []
    for i in range(n):
        _, at = _time(rng, 10 * 3600, 22 * 3600)
        tx = f"4200{seed:08d}{i:020d}"
        openid = f"o-m-{rng.randint(1, members):05d}"
        body = wx.notification("TRANSACTION.SUCCESS", wx.transaction(tx, openid, rng.randint(1_500, 150_000),
                                                                     success_time=at))
        for _ in range(2):
            status, _ = worker.post("/v1/callbacks/wechatpay", body, wx.headers(body))
            out.append((202 if status == 204 else status, {"event_id": f"wx:{tx}"}))
        trade_no = f"2026{seed:08d}{i:016d}"
        params = ali.sign(ali.trade(trade_no, f"2088{rng.randint(0, 10**12):012d}",
                                    f"{rng.randint(15, 1500)}.{rng.randint(0, 99):02d}",
                                    gmt_payment=at[:19].replace("T", " ")))
        for _ in range(2):
            status, reply = worker.post("/v1/callbacks/alipay", ali.body(params),
                                        {"Content-Type": "application/x-www-form-urlencoded"})
            out.append((202 if (status, reply) == (200, "success") else status, {"event_id": f"ali:{trade_no}"}))
    return out


async def _drive(worker: WorkerProcess, settings: Settings, day: DemoDay, concurrency: int,
                 gateways: tuple[Any, Any, int, int], receiver: WebhookReceiver) -> int:
    t0 = time.monotonic()
    print(f"demo: {len(day.registrations)} registrations, {len(day.sign_ins)} sign-ins ...", flush=True)
    rm = await send_callbacks(worker.base_url, worker.callback_secret, day.registrations + day.sign_ins,
                              concurrency, path="/v1/callbacks/member")
    # Payments by openid resolve only once the registrations are applied.
    registered = len(day.registrations) + len(day.sign_ins)
    worker.wait_until(lambda: worker.metrics()["events_applied_total"] >= registered, timeout=120,
                      what="the registrations to be applied")
    # Each member's callbacks in order (those naming the member and those naming their
    # openid in one lane: the day's task bonus and campaign caps follow that order),
    # members concurrently: the same seed then gives the same points.
    phase1 = day.payments + day.duplicates
    print(f"demo: sending {len(phase1)} payment callbacks ...", flush=True)
    r1 = await send_callbacks_in_order(worker.base_url, worker.callback_secret, phase1, concurrency=concurrency,
                                       lane_of=_member_lane)
    n_gateway = max(2, len(day.payments) // 100)
    print(f"demo: {n_gateway} WeChat Pay and {n_gateway} Alipay notifications in their own formats, each "
          "sent twice ...", flush=True)
    rg = await asyncio.to_thread(_gateway_notifications, worker, gateways, n_gateway)
    bad = day.bad_bodies + day.forged
    forged = set(range(len(bad) - len(day.forged), len(bad)))
    rb = await send_callbacks(worker.base_url, worker.callback_secret, bad, concurrency, forged)
    print(f"demo: sending {len(day.refunds)} refund callbacks ...", flush=True)
    r2 = await send_callbacks_in_order(worker.base_url, worker.callback_secret, day.refunds, concurrency=concurrency,
                                       lane_of=_member_lane)
    worker.wait_until(lambda: _settled(worker), timeout=300, what="the payments to be processed")
    print(f"demo: {len(day.late_registrations)} guests register in the evening ...", flush=True)
    r3 = await send_callbacks(worker.base_url, worker.callback_secret, day.late_registrations, concurrency,
                              path="/v1/callbacks/member")
    t_sent = time.monotonic()
    results = rm + r1 + rg + rb + r2 + r3
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    accepted_ids = {body["event_id"] for status, body in results if status == 202}

    worker.wait_until(lambda: _settled(worker), timeout=300, what="every accepted event to be processed")
    applied = worker.metrics()["events_applied_total"]
    worker.wait_until(
        lambda: worker.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= applied,
        timeout=300,
        what="every ledger row in ClickHouse",
    )
    t_done = time.monotonic()
    print("demo: an evening of engagement: the prize wheel, sign-in plans, stored value, airline miles ...",
          flush=True)
    eng = await _engagement(worker, gateways[2], gateways[3], concurrency, receiver)
    _settled_in_ledger(worker, eng["points_ops"], "the engagement")
    worker.wait_until(lambda: sum(o["plays"] for o in worker.get("/v1/admin/games/wheel-nov/draws?limit=1")[1]
                                  ["outcomes"]) >= eng["plays"], timeout=120, what="every draw in ClickHouse")
    audited = sum(o["plays"] for o in worker.get("/v1/admin/games/wheel-nov/draws?limit=1")[1]["outcomes"])
    office = await _back_office(worker, gateways[2], gateways[3], concurrency)
    _settled_in_ledger(worker, eng["points_ops"], "the back office")
    print("demo: the mini-program's evening: a flash sale, umbrellas at the desk, receipts of cash purchases ...",
          flush=True)
    mall = await _mall_and_receipts(worker, gateways[2], gateways[3], concurrency)
    http_ops = eng["points_ops"] + mall["points_ops"]
    _settled_in_ledger(worker, http_ops, "the points mall and the receipts")
    print("demo: the next morning: the scheduled campaigns run (09:00 a points-mall nudge, 09:30 a coffee) ...",
          flush=True)
    sched = _next_morning(worker, receiver)
    worker.wait_until(lambda: worker.get("/v1/admin/stored-value/reconcile")[1]["clean"], timeout=120,
                      what="stored value: Redis = ledger")
    _, sv_rec = worker.get("/v1/admin/stored-value/reconcile")

    def coupon_kinds() -> dict[str, int]:
        rows = worker.get("/v1/admin/coupons/totals", admin=True)[1]["rows"]
        out: dict[str, int] = {}
        for r in rows:
            out[r["kind"]] = out.get(r["kind"], 0) + int(r["coupons"])
        return out
    # Every issued coupon pushed and its "pushed" row written.
    worker.wait_until(lambda: coupon_kinds().get("pushed", 0) >= coupon_kinds().get("issued", 0), timeout=120,
                      what="every coupon pushed")
    kinds = coupon_kinds()
    with receiver.lock:
        pushed_ids = Counter(pid for pid, b, _ in receiver.received if b.get("type") == "coupon_issued")
    m, totals = _counts_at_rest(worker, http_ops)
    _, rec = worker.get("/v1/admin/reconcile", admin=True)
    dead = await read_dead_letters(settings.kafka_bootstrap, f"{worker.run_id}.dead-letter")
    by_source: dict[str, int] = {}
    for d in dead:
        by_source[d["source"]] = by_source.get(d["source"], 0) + 1

    sent = len(results)
    equal = rec["redis_total"] == rec["ledger_total"] and rec["clean"]
    pushes_ok = kinds.get("issued", 0) == kinds.get("pushed", 0) == len(pushed_ids)
    credited = m["guest_payments_credited_total"]
    held = m["refunds_held_total"] - m["refunds_released_total"]
    # Engagement operations write their own ledger rows; stored-value payments also
    # go through accrual as payment events.
    counts_tie = (m["events_applied_total"] + http_ops == totals["events"]
                  and m["events_applied_total"] + m["events_rejected_total"] + m["events_guest_total"] + held
                  == len(accepted_ids) + credited + eng["sv_payments"] + office["member_events"]
                  + mall["receipt_payments"] + sched["pushes"] + m.get("scheduled_events_sent_total", 0))
    if not counts_tie:
        print(f"demo: events not accounted for: applied {m['events_applied_total']:,} + HTTP operations {http_ops:,} "
              f"vs ledger events {int(totals['events']):,}; applied + rejected + guest + held "
              f"{m['events_applied_total'] + m['events_rejected_total'] + m['events_guest_total'] + held:,} vs "
              f"accepted {len(accepted_ids):,} + credited {credited:,} + stored value {eng['sv_payments']:,} "
              f"+ back office {office['member_events']:,} + receipts {mall['receipt_payments']:,} "
              f"+ campaign pushes {sched['pushes']:,} + scheduled {m.get('scheduled_events_sent_total', 0):,}",
              flush=True)
    engaged_ok = eng["errors"] == 0 and audited == eng["plays"] and sv_rec["clean"] and mall["errors"] == 0 \
        and mall["ok"] and sched["ok"]
    unbounded = worker.keys_out_of_bounds()
    bounded_ok = not unbounded
    for line in unbounded[:10]:
        print(f"unbounded Redis key: {line}", flush=True)
    used, n_keys, n_members = recovery_check.redis_bytes(worker.redis_url, worker.run_id)
    lost = await asyncio.to_thread(_lose_redis_and_rebuild, worker)
    rebuilt_ok = all(k.ok for k in lost.kinds) and lost.clean
    lines = [
        "",
        f"Loyalty demo report — mall day {DAY}",
        "-" * 60,
        f"callbacks sent                 {_fmt(sent):>12}",
        f"  accepted (202, Kafka acked)  {_fmt(statuses.get(202, 0)):>12}   distinct events {_fmt(len(accepted_ids))}",
        f"    of which gateway formats   {_fmt(sum(1 for st, _ in rg if st == 202)):>12}   "
        f"WeChat Pay v3 {_fmt(m['gateway_wechatpay_payment_total'])}, Alipay {_fmt(m['gateway_alipay_payment_total'])}",
        f"  rejected 400 (bad body)      {_fmt(statuses.get(400, 0)):>12}",
        f"  rejected 401 (bad signature) {_fmt(statuses.get(401, 0)):>12}",
        f"  other                        {_fmt(sent - sum(statuses.get(s, 0) for s in (202, 400, 401))):>12}",
        f"events applied                 {_fmt(m['events_applied_total']):>12}",
        f"duplicates (no second effect)  {_fmt(m['events_duplicate_total']):>12}",
        f"refused by the rules           {_fmt(m['events_rejected_total']):>12}",
        f"refunds held for their payment {_fmt(held):>12}   (refunds of payments not seen yet)",
        f"guest payments (no member yet) {_fmt(m['events_guest_total']):>12}   "
        f"credited after registering {_fmt(credited)}",
        f"member events applied          {_fmt(totals['member_events']):>12}   "
        f"registrations and sign-ins {_fmt(totals['registrations_sign_ins'])}, the evening's engagement "
        f"{_fmt(totals['member_events'] - totals['registrations_sign_ins'])} (its prize rows vary with the draw)",
        f"tier upgrades                  {_fmt(totals['tier_changes']):>12}",
        f"points issued                  {_fmt(m['points_issued_total']):>12}",
        f"points debited (refunds, expiry) {_fmt(m['points_debited_total']):>11}",
        f"members with points            {_fmt(rec['members']):>12}",
        f"sum of Redis balances          {_fmt(rec['redis_total']):>12}",
        f"sum of ClickHouse ledger       {_fmt(rec['ledger_total']):>12}   "
        f"{'EQUAL' if equal else 'NOT EQUAL'} ({rec['mismatch_count']} members differ)",
        f"ledger rows (movements)        {_fmt(totals['movements']):>12}   events {_fmt(totals['events'])}",
        f"coupons issued                 {_fmt(kinds.get('issued', 0)):>12}   by triggers and prizes; pushed "
        f"{_fmt(kinds.get('pushed', 0))}, received by the webhook {_fmt(len(pushed_ids))} "
        f"(twice: {sum(1 for n in pushed_ids.values() if n > 1)})",
        f"game plays (prize wheel)       {_fmt(eng['plays']):>12}   prizes {_fmt(eng['prizes'])}, thanks "
        f"{_fmt(eng['thanks'])}, out of stock {_fmt(eng['out_of_stock'])}; refused (points) "
        f"{_fmt(eng['plays_refused'])}; draws audited in ClickHouse {_fmt(audited)}",
        f"plan sign-ins (7-day cycle)    {_fmt(eng['sign_ins']):>12}   points given {_fmt(eng['sign_in_points'])}",
        f"stored value top-ups           {_fmt(eng['topups']):>12}   {eng['topup_fen'] / 100:,.2f} yuan; paid at the "
        f"till {_fmt(eng['sv_payments'])} times, {eng['sv_paid_fen'] / 100:,.2f} yuan (earning points through accrual)",
        f"stored value balances          {sv_rec['redis_total_fen'] / 100:>12,.2f}   yuan in Redis, ledger "
        f"{sv_rec['ledger_total_fen'] / 100:,.2f}: {'EQUAL' if sv_rec['clean'] else 'NOT EQUAL'}",
        f"points to airline miles        {_fmt(eng['exchanges']):>12}   requests sent once each, confirmed "
        f"{_fmt(eng['confirmed'])}",
        f"till and back office           {_fmt(office['redeemed']):>12}   welcome coupons redeemed at the till; "
        f"holds placed {_fmt(office['holds'])}, tier overrides {_fmt(office['overrides'])}, plates bound "
        f"{_fmt(office['plates'])} (their cars parked: {_fmt(office['parked'])} entries and exits), segments "
        f"refreshed for {_fmt(office['segmented'])} members",
        f"points mall flash sale         {_fmt(mall['flash_sold']):>12}   of {mall['flash_stock']} tote bags, "
        f"{_fmt(mall['flash_tried'])} members trying at once; refused: "
        + ", ".join(f"{k} {v}" for k, v in sorted(mall["flash_refused"].items()))
        + f"; a winner's second try sold {mall['flash_twice']}",
        f"points mall desk orders        {_fmt(mall['umbrellas']):>12}   umbrellas exchanged; collected "
        f"{_fmt(mall['collected'])}, cancelled {_fmt(mall['cancelled'])} (points and unit back)",
        f"receipts submitted             {_fmt(mall['receipts']):>12}   (小票积分) approved at once "
        f"{mall['receipts_auto']}, "
        f"by customer service {mall['receipts_reviewed']}, rejected {mall['receipts_rejected']} (member told why); "
        f"earning through accrual as payments {mall['receipt_payments']}",
        f"members' event (12 seats)      {_fmt(mall['salon_seated']):>12}   seated of {mall['salon_tried']} signing "
        f"up at once, {mall['salon_waiting']} waitlisted; {mall['salon_cancelled']} cancelled, "
        f"{mall['salon_promoted']} promoted in order; checked in at the door {mall['salon_checked_in']}",
        f"scheduled campaigns (next day) {_fmt(sched['reached']):>12}   members reached: "
        + "; ".join(f"{r['campaign']} {r['reached']:,} (pushed {r['pushed']:,}, delivered {r['delivered']:,}, "
                    f"held {r['held']:,})"
                    for r in sched["kpi"])
        + f"; notices received by the webhook {_fmt(sched['notices'])}, coffees issued {_fmt(sched['coffees'])}",
        f"Redis keys out of bounds       {_fmt(len(unbounded)):>12}   (every key of a family in "
        "streams/state/keys.py; those that grow per event or request expire)",
        f"Redis per member               {_fmt(used // max(1, n_members)):>12}   bytes ({used / 1e6:,.1f} MB in "
        f"{_fmt(n_keys)} keys for {_fmt(n_members)} members: states, records, history, bindings, boards...)",
        f"Redis lost, then rebuilt       {_fmt(lost.wiped):>12}   keys wiped; `loyalty rebuild` {lost.seconds:.1f} s, "
        f"reconcile {'clean' if lost.clean else 'NOT CLEAN'}; equal after, by kind:",
        *(f"  {k.kind:<52} {k.equal:>6,}/{k.total:,}" + ("" if k.ok else "   DIFFERENT: " + "; ".join(k.examples[:2]))
          for k in lost.kinds),
        f"dead-letter records            {_fmt(len(dead)):>12}   "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())),
        f"throughput: callbacks          {sent / (t_sent - t0):>12,.0f} /s   ({t_sent - t0:.1f} s)",
        f"throughput: end to end         {len(accepted_ids) / (t_done - t0):>12,.0f} events/s "
        f"(first callback to last ledger row, {t_done - t0:.1f} s)",
        "varies between runs of one seed: prizes (a CSPRNG draw, as in production) and what follows from "
        "them; which payments get a campaign's last budgeted points once its budget runs out (different "
        "members' payments are applied in parallel partitions, in no fixed order between them) and what follows "
        "from those points (a tier reached one payment earlier or later, the clawback of its refund)",
        "-" * 60,
        "result: "
        + (
            "OK — balances equal the ledger, every accepted event accounted for, every coupon pushed once"
            if equal and counts_tie and pushes_ok and engaged_ok and bounded_ok and rebuilt_ok and office["ok"]
            else "FAILED — " + ", ".join(name for name, good in (
                ("balances differ from the ledger", equal), ("events not accounted for", counts_tie),
                ("coupons not pushed once", pushes_ok), ("engagement or points-mall errors", engaged_ok),
                ("Redis keys out of bounds", bounded_ok), ("the rebuild differs", rebuilt_ok),
                ("back-office errors", office["ok"])) if not good)
        ),
    ]
    print("\n".join(lines), flush=True)
    return 0 if equal and counts_tie and pushes_ok and engaged_ok and bounded_ok and rebuilt_ok and office["ok"] else 1


def _next_morning(worker: WorkerProcess, receiver: WebhookReceiver) -> dict[str, Any]:
    """The scheduler's clock moved to the next morning: the 09:00 nudge (a notice to members
    with 2,000 points or more) and the 09:30 coffee (a coupon to silver members and up) run;
    each member reached once, the notices received by the webhook, their figures in the KPI."""
    clock_file = Path(worker.env["LOYALTY_CLOCK_FILE"])
    body = orjson.dumps({"audience": {"min_points": 2000}})
    status, preview = worker.post("/v1/admin/audiences/preview", body, {
        "Authorization": f"Bearer {worker.admin_token}", "Content-Type": "application/json"})
    expected = preview["count"] if status == 200 else -1

    def sent(campaign: str) -> bool:
        c = next(c for c in worker.get("/v1/admin/campaigns")[1]["campaigns"] if c["id"] == campaign)
        return bool(c["runs"]) and c["runs"][0]["status"] == "sent"
    for at, campaign in (("09:00:30", NUDGE), ("09:30:30", THANKS)):
        tmp = clock_file.with_suffix(".tmp")
        tmp.write_text(f"{DAY_AFTER}T{at}+08:00")
        tmp.replace(clock_file)
        worker.wait_until(lambda c=campaign: sent(c), timeout=120, what=f"the {at[:5]} run sent")
    runs = {c["id"]: c["runs"][0] for c in worker.get("/v1/admin/campaigns")[1]["campaigns"]}
    pushes = sum(r["total"] for r in runs.values())
    worker.wait_caught_up()

    def notices() -> int:
        with receiver.lock:
            return len({b["push_id"] for _, b, _ in receiver.received if b.get("kind") == "campaign_notice"})
    kpi: list[dict[str, Any]] = []

    def figures() -> bool:
        # To today: the runs are on the demo's clock (the day after the demo's day), their
        # pushes delivered now.
        today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
        kpi[:] = worker.get(f"/v1/admin/kpis?kpi=scheduled_campaigns&from={DAY}&to={today}")[1]["kpis"][
            "scheduled_campaigns"]
        return sum(r["reached"] for r in kpi) == pushes
    worker.wait_until(figures, timeout=60, what="the campaigns' figures in ClickHouse")

    def by_id() -> dict[str, dict[str, Any]]:
        return {r["campaign"]: r for r in kpi}
    by = by_id()
    worker.wait_until(lambda: notices() >= by[NUDGE]["pushed"], timeout=60, what="every notice received")
    worker.wait_until(lambda: figures() and by_id()[NUDGE]["delivered"] >= by[NUDGE]["pushed"], timeout=60,
                      what="every notice's delivery in ClickHouse")
    by = by_id()
    ok = (runs[NUDGE]["total"] == expected == by[NUDGE]["reached"] and notices() == by[NUDGE]["pushed"]
          == by[NUDGE]["delivered"]
          and by[THANKS]["issued"] == by[THANKS]["pushed"] and by[NUDGE]["pushed"] + by[NUDGE]["held"]
          == by[NUDGE]["reached"])
    return {"pushes": pushes, "reached": sum(r["reached"] for r in kpi), "kpi": kpi, "notices": notices(),
            "coffees": by[THANKS]["issued"], "ok": ok}


async def _back_office(worker: WorkerProcess, seed: int, members: int, concurrency: int) -> dict[str, Any]:
    """The till and the back office: welcome coupons redeemed with a payment, points held
    for a checkout that has not paid yet, tier overrides, plates bound for the car park,
    and the segments refreshed (the states these leave are what a rebuild must restore)."""
    rng = random.Random(seed + 3)
    ids = [f"m-{i:05d}" for i in range(1, members + 1)]
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    redeem: list[tuple[str, dict[str, Any], str]] = []
    for m in rng.sample(ids, k=max(1, members // 10)):
        status, body = worker.get(f"/v1/members/{m}/coupons")
        active = [c for c in (body or {}).get("coupons", []) if status == 200 and c.get("template") == "welcome-20"
                  and c.get("status") == "active"]
        if active:
            redeem.append(("/v1/coupons/redeem", {
                "member_id": m, "coupon_id": active[0]["coupon_id"], "payment_id": f"{DAY}-till-{m}",
                "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "food", "amount_fen": 12_000,
                "occurred_at": now}, f"{DAY}-coupon-{m}"))
    holds = [("/v1/holds", {"member_id": m, "points": 100, "ttl_seconds": 3600}, f"{DAY}-hold-{m}")
             for m in rng.sample(ids, k=max(1, members // 20))]
    plates = [(f"/v1/members/{m}/plates", {"plate": f"沪A{i:05d}", "auto_pay": i % 2 == 0}, f"{DAY}-plate-{m}")
              for i, m in enumerate(rng.sample(ids, k=max(1, members // 20)))]
    r_redeem = await post_signed_many(worker, redeem, concurrency)
    r_hold = await post_signed_many(worker, holds, concurrency)
    r_plate = await post_signed_many(worker, plates, concurrency)
    # Their cars drive in (and stay: open sessions), and one more car in and out.
    entries = [orjson.dumps({"event_id": f"{DAY}-in-{i}", "type": "entry", "occurred_at": now,
                             "plate": req["plate"], "car_park": "sh-park", "gate": "north"})
               for i, (_, req, _) in enumerate(plates)]
    visitor = orjson.dumps({"event_id": f"{DAY}-in-visitor", "type": "entry", "occurred_at": now,
                            "plate": "沪B00001", "car_park": "sh-park", "gate": "north"})
    leaves = orjson.dumps({"event_id": f"{DAY}-out-visitor", "type": "exit", "occurred_at": now,
                           "plate": "沪B00001", "car_park": "sh-park", "gate": "south"})
    r_park = await send_callbacks(worker.base_url, worker.callback_secret, [*entries, visitor], concurrency,
                                  path="/v1/callbacks/parking")
    r_park += await send_callbacks(worker.base_url, worker.callback_secret, [leaves], 1, path="/v1/callbacks/parking")
    overrides = rng.sample(ids, k=3)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).isoformat(timespec="seconds")
    r_over = [worker.post(f"/v1/admin/members/{m}/tier", orjson.dumps({"tier": "diamond", "until": until}),
                          {"Authorization": f"Bearer {worker.admin_token}"}) for m in overrides]
    worker.wait_until(lambda: all(worker.get(f"/v1/members/{m}")[1].get("tier") == "diamond" for m in overrides),
                      timeout=60, what="the tier overrides")
    _, seg = worker.post("/v1/admin/segments/refresh", b"{}", {"Authorization": f"Bearer {worker.admin_token}"})
    held_ok = sum(1 for st, _ in r_hold if st == 201)
    return {
        "redeemed": sum(1 for st, _ in r_redeem if st == 201), "holds": held_ok,
        "plates": sum(1 for st, _ in r_plate if st == 200), "overrides": sum(1 for st, _ in r_over if st == 200),
        "segmented": int((seg or {}).get("members", 0)) if isinstance(seg, dict) else 0,
        # Events these send through accrual: each override, each member whose segment changed.
        "member_events": sum(1 for st, _ in r_over if st == 200)
        + (int(seg.get("changed", 0)) if isinstance(seg, dict) else 0),
        "parked": sum(1 for st, _ in r_park if st == 202),
        "ok": all(st == 201 for st, _ in r_redeem) and all(st == 200 for st, _ in r_plate)
        and all(st == 200 for st, _ in r_over) and all(st == 202 for st, _ in r_park),
    }


@dataclass
class LostRedis:
    wiped: int
    seconds: float
    clean: bool
    kinds: list[recovery_check.KindResult]


def _lose_redis_and_rebuild(worker: WorkerProcess) -> LostRedis:
    """The day's end: every member's state and binding captured, the namespace wiped (Redis
    lost it), `loyalty rebuild`, then compared kind by kind and reconciled."""
    lost = recovery_check.lose_and_rebuild(worker)
    if lost.rebuild.returncode != 0:
        print(f"loyalty rebuild failed ({lost.rebuild.returncode}): {lost.rebuild.stdout}{lost.rebuild.stderr}",
              flush=True)
    clean = bool(worker.get("/v1/admin/reconcile", admin=True)[1].get("clean"))
    return LostRedis(lost.wiped, lost.seconds, clean and lost.rebuild.returncode == 0,
                     recovery_check.compare(lost.before, lost.after))


def _receipt_photo(merchant: str, no: str, amount_fen: int) -> bytes:
    """A photo of a till's slip (a PNG the upload decodes and verifies)."""
    import io

    from PIL import Image, ImageDraw

    im = Image.new("RGB", (220, 160), "white")
    draw = ImageDraw.Draw(im)
    for i, text in enumerate((merchant, f"Receipt {no}", "-" * 26, f"TOTAL {amount_fen / 100:>12.2f}", "Paid: cash")):
        draw.text((12, 14 + 22 * i), text, fill="black")
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


async def _mall_and_receipts(worker: WorkerProcess, seed: int, members: int, concurrency: int) -> dict[str, Any]:
    """The mini-program's evening: a flash sale of 30 tote bags that twice as many members
    try for at once (each winner at most one), umbrellas exchanged and collected at the
    desk (one cancelled), receipts of cash purchases (the food court's approved by the rules
    at once, the others reviewed by customer service: two approved, one rejected), and the
    members' salon (12 seats, 20 signing up at once; the waitlist promoted as seats are given
    back; check-in at the door)."""
    rng = random.Random(seed + 4)
    ids = [f"m-{i:05d}" for i in range(1, members + 1)]
    crowd = rng.sample(ids, k=min(len(ids), 60))
    r_flash = await post_signed_many(worker, [("/v1/mall/items/tote-flash/exchange", {"member_id": m},
                                               f"{DAY}-flash-{m}") for m in crowd], concurrency)
    winners = [m for m, (st, _) in zip(crowd, r_flash, strict=True) if st == 201]
    refused = Counter(b.get("field") for st, b in r_flash if st == 409)
    r_again = await post_signed_many(worker, [("/v1/mall/items/tote-flash/exchange", {"member_id": m},
                                               f"{DAY}-flash-again-{m}") for m in winners[:5]], concurrency)
    shoppers = rng.sample(ids, k=max(1, members // 40))
    r_umb = await post_signed_many(worker, [("/v1/mall/items/desk-umbrella/exchange", {"member_id": m},
                                             f"{DAY}-umbrella-{m}") for m in shoppers], concurrency)
    orders = [(m, b["order_id"]) for m, (st, b) in zip(shoppers, r_umb, strict=True) if st == 201]
    steps = [(f"/v1/mall/orders/{o}/{'cancel' if i == 0 else 'collect'}", {"member_id": m}, f"{o}-desk")
             for i, (m, o) in enumerate(orders)]
    r_steps = await post_signed_many(worker, steps, concurrency)
    # Receipts: purchases paid in cash this evening (the ones the payment system never saw).
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    slips = [(m, "sh-mall-shop-02", rng.randint(2_000, 20_000)) for m in rng.sample(ids, k=4)]
    slips += [(m, "sh-mall-shop-01", rng.randint(20_000, 90_000)) for m in rng.sample(ids, k=3)]
    submitted: list[tuple[int, Any]] = []
    for k, (m, merchant, fen) in enumerate(slips):
        no = f"{DAY.replace('-', '')}-{seed % 1000:03d}-{k:02d}"
        photo = _receipt_photo(merchant, no, fen)
        _, up = worker.post("/v1/receipts/images", photo, worker.pos_headers(photo, **{"Content-Type": "image/png"}))
        body = orjson.dumps({"member_id": m, "merchant_id": merchant, "receipt_no": no, "amount_fen": fen,
                             "purchased_at": (now + dt.timedelta(minutes=7 * k)).isoformat(timespec="seconds"),
                             "image": up.get("image") if isinstance(up, dict) else ""})
        submitted.append(worker.post("/v1/receipts", body,
                                     worker.pos_headers(body, **{"Content-Type": "application/json"})))
    pending = [(b["member_id"], b["receipt_id"]) for st, b in submitted if st == 201 and b["status"] == "pending"]
    decisions = []
    for i, (m, rid) in enumerate(pending):
        verb, reason = ("reject", "the photo's total does not match") if i == len(pending) - 1 else ("approve", "")
        decisions.append(worker.post(f"/v1/admin/receipts/{rid}/{verb}",
                                     orjson.dumps({"member_id": m, "reason": reason}),
                                     {"Authorization": f"Bearer {worker.admin_token}",
                                      "Content-Type": "application/json"}))
    # The members' event: 20 members sign up at once for 12 seats; two seated ones cancel
    # (the first two waiting take their seats); four check in at the door with their code.
    fans = rng.sample(ids, k=min(len(ids), 20))
    r_sign = await post_signed_many(worker, [(f"/v1/events/{SALON}/sign-ups", {"member_id": m}, f"{DAY}-salon-{m}")
                                             for m in fans], concurrency)
    seated = [m for m, (st, b) in zip(fans, r_sign, strict=True) if st == 201 and b["status"] == "registered"]
    waited = [m for m, (st, b) in zip(fans, r_sign, strict=True) if st == 201 and b["status"] == "waitlisted"]
    r_cancel = await post_signed_many(worker, [(f"/v1/events/{SALON}/cancellations", {"member_id": m},
                                                f"{DAY}-salon-off-{m}") for m in seated[:2]], concurrency)
    promoted = [m for m in waited
                if any(x["event"] == SALON and x["status"] == "registered"
                       for x in worker.get(f"/v1/members/{m}/events")[1]["signups"])]
    codes = [next(x["check_in_code"] for x in worker.get(f"/v1/members/{m}/events")[1]["signups"]
                  if x["event"] == SALON) for m in seated[2:6]]
    r_in = []
    for code in codes:
        body = orjson.dumps({"code": code})
        r_in.append(worker.post(f"/v1/events/{SALON}/check-ins", body, worker.pos_headers(body)))
    auto = sum(1 for st, b in submitted if st == 201 and b["status"] == "approved")
    reviewed = sum(1 for st, b in decisions if st == 201 and b["status"] == "approved")

    def ok(results: list[tuple[int, Any]], status: int = 201) -> int:
        return sum(1 for st, _ in results if st == status)
    everything = r_flash + r_again + r_umb + r_steps + submitted + decisions + r_sign + r_cancel + r_in
    return {
        "salon_tried": len(fans), "salon_seated": len(seated), "salon_waiting": len(waited),
        "salon_cancelled": ok(r_cancel), "salon_promoted": len(promoted), "salon_checked_in": ok(r_in),
        "flash_tried": len(crowd), "flash_sold": len(winners), "flash_stock": 30,
        "flash_refused": dict(refused), "flash_twice": ok(r_again),
        "umbrellas": len(orders), "collected": ok(r_steps) - (1 if orders else 0), "cancelled": 1 if orders else 0,
        "receipts": ok(submitted), "receipts_auto": auto, "receipts_reviewed": reviewed,
        "receipts_rejected": sum(1 for st, b in decisions if st == 201 and b["status"] == "rejected"),
        "receipt_payments": auto + reviewed,
        # Operations that write ledger rows under their own id: exchanges, the orders' steps,
        # the receipts' submissions and the reviewers' decisions.
        "points_ops": len(winners) + len(orders) + ok(r_steps) + ok(submitted) + ok(decisions) + ok(r_sign)
        + ok(r_cancel) + len(promoted) + ok(r_in),
        "errors": sum(1 for st, _ in everything if st not in (201, 409)),
        "ok": len(winners) == min(30, len(crowd) - refused.get("points", 0)) and ok(r_again) == 0
        and ok(submitted) == len(slips) and len(decisions) == len(pending)
        and len(seated) == min(12, ok(r_sign)) and ok(r_in) == len(codes),
    }


async def _engagement(worker: WorkerProcess, seed: int, members: int, concurrency: int,
                      receiver: WebhookReceiver) -> dict[str, int]:
    """An evening over the HTTP API: members play the prize wheel, sign in on the week
    plan, top up stored value and pay with it at the till (payments that then go through
    accrual), and send points to the airline, which confirms each request it received."""
    rng = random.Random(seed + 2)
    ids = [f"m-{i:05d}" for i in range(1, members + 1)]
    plays = [("/v1/games/wheel-nov/plays", {"member_id": m}, f"{DAY}-play-{m}-{k}")
             for m in rng.sample(ids, k=max(1, members // 4)) for k in range(2)]
    signs = [("/v1/sign-in-plans/week/sign-ins", {"member_id": m}, f"{DAY}-week-{m}")
             for m in rng.sample(ids, k=max(1, members // 3))]
    savers = rng.sample(ids, k=max(1, members // 10))
    tops = [("/v1/stored-value/topups", {"member_id": m, "amount_fen": 100_000, "channel": "wechat"},
             f"{DAY}-topup-{m}") for m in savers]
    r_play = await post_signed_many(worker, plays, concurrency)
    r_sign = await post_signed_many(worker, signs, concurrency)
    r_top = await post_signed_many(worker, tops, concurrency)
    pays = [("/v1/stored-value/payments", {"member_id": m, "amount_fen": rng.randint(5_000, 30_000),
                                           "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01",
                                           "category": "fashion"}, f"{DAY}-svpay-{m}") for m in savers]
    r_pay = await post_signed_many(worker, pays, concurrency)
    outs = [("/v1/exchanges", {"member_id": m, "partner": "river-air", "points": 500}, f"{DAY}-air-{m}")
            for m in rng.sample(ids, k=max(1, members // 20))]
    r_out = await post_signed_many(worker, outs, concurrency)
    sent = [(req["member_id"], key) for (_, req, key), (st, _) in zip(outs, r_out, strict=True) if st == 201]
    worker.wait_until(lambda: all(receiver.ids()[key] for _, key in sent), timeout=120,
                      what="the airline to receive its requests")
    confirms = [("/v1/partners/river-air/confirmations", {"member_id": m, "exchange_id": key, "status": "confirmed"},
                 f"{key}-ok") for m, key in sent]
    r_conf = await post_signed_many(worker, confirms, concurrency, partner=True)

    def ok(results: list[tuple[int, Any]], status: int = 201) -> int:
        return sum(1 for st, _ in results if st == status)
    outcomes = Counter(r["outcome"] for st, r in r_play if st == 201)
    everything = r_play + r_sign + r_top + r_pay + r_out + r_conf
    return {
        "plays": ok(r_play), "plays_refused": ok(r_play, 409), "prizes": outcomes["prize"],
        "thanks": outcomes["thanks"], "out_of_stock": outcomes["out_of_stock"],
        "sign_ins": ok(r_sign), "sign_in_points": sum(r["points"] for st, r in r_sign if st == 201),
        "topups": ok(r_top), "topup_fen": sum(r["amount_fen"] for st, r in r_top if st == 201),
        "sv_payments": ok(r_pay), "sv_paid_fen": sum(r["amount_fen"] for st, r in r_pay if st == 201),
        "exchanges": len(sent), "confirmed": ok(r_conf),
        # Operations that write points ledger rows under their own event id.
        "points_ops": ok(r_play) + ok(r_sign) + len(sent) + ok(r_conf),
        "errors": sum(1 for st, _ in everything if st not in (201, 409)),
    }


if __name__ == "__main__":
    sys.exit(run_demo(3000, 400, 20261123, 32))
