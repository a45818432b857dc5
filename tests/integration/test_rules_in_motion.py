"""Rules in motion over the real services: campaign windows, budgets shared by two
workers, tier upgrades, member events and identities, rules reload, backtest."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devtools.workers import WorkerProcess, send_callbacks_in_order
from streams.settings import Settings
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration

RULES = rules_toml("""
version = "VERSION"
utc_offset_minutes = 480
guest_credit_days = 7
""", "normal_tier", tail="""
[formats.mall]
points = RATE
per_fen = 100
[[business_units]]
id = "mall"
format = "mall"
[tier_policy]
window_months = 12
review_after_days = 1
[[tiers]]
id = "gold"
multiplier_pct = 200
qualify_points = 100000
[campaign_policy]
stacking = "add"
[[campaigns]]
id = "flash"
bonus_points = 50
budget_points = 5000
[[campaigns]]
id = "happy-hour"
multiplier_pct = 300
starts_at = "2026-11-23T18:00:00+08:00"
ends_at = "2026-11-23T19:00:00+08:00"
[behaviour]
registration_gift = 100
[behaviour.sign_in]
points = 5
""")


def write_rules(path: Path, version: str = "motion-1", rate: int = 1) -> Path:
    path.write_text(RULES.replace("VERSION", version).replace("RATE", str(rate)))
    return path


def pay(member: str, amount: int, at: str = "2026-11-23T10:00:00+08:00", **over: Any) -> dict[str, Any]:
    return {"event_id": f"tx-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": at, "member_id": member,
            "bu_id": "mall", "merchant_id": "s1", "category": "fashion", "amount_fen": amount,
            "channel": "wechat", **over}


def member(status_body: tuple[int, Any]) -> dict[str, Any]:
    assert status_body[0] == 200, status_body
    return status_body[1]  # type: ignore[no-any-return]


def wait_events(worker: WorkerProcess, member_id: str, n: int) -> dict[str, Any]:
    """The member once n events are applied and their movements are in the history (which
    the accrual writes after the member's write, while it applies the next batch)."""
    def arrived() -> bool:
        status, body = worker.get(f"/v1/members/{member_id}")
        return (status == 200 and isinstance(body, dict) and body.get("events", 0) >= n
                and len(body.get("recent_movements", [])) >= min(n, 8))
    worker.wait_until(arrived, timeout=60, what=f"{n} events of {member_id} and their movements")
    return member(worker.get(f"/v1/members/{member_id}"))


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules.toml")


def test_campaign_window_opens_and_closes_while_events_flow(worker_factory: Any, rules_file: Path) -> None:
    worker: WorkerProcess = worker_factory("window", LOYALTY_RULES=str(rules_file))
    worker.start()
    m = f"m-{uuid.uuid4().hex[:8]}"
    times = ["17:59:59", "18:00:00", "18:30:00", "18:59:59", "19:00:00", "20:00:00"]
    events = [pay(m, 1_000, at=f"2026-11-23T{t}+08:00") for t in times]
    results = asyncio.run(send_callbacks_in_order(worker.base_url, worker.callback_secret,
                                                  [orjson.dumps(e) for e in events]))
    assert {s for s, _ in results} == {202}
    got = wait_events(worker, m, len(events))
    by_event = {r["event_id"]: r for r in got["recent_movements"]}
    points = [by_event[e["event_id"]]["points"] for e in events]
    # 10 base + 50 flash everywhere; the happy hour adds 20 only inside [18:00, 19:00).
    assert points == [60, 80, 80, 80, 60, 60]
    assert any(p == {"rule": "campaign", "id": "happy-hour", "points": 20}
               for p in by_event[events[1]["event_id"]]["explain"])


async def produce(topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=Settings.from_env().kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futs = [await producer.send(topic, key=e["member_id"].encode(), value=orjson.dumps(e)) for e in events]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def test_budget_exhausted_mid_stream_is_never_overspent_by_two_workers(
    worker_factory: Any, rules_file: Path, tmp_path: Path
) -> None:
    first: WorkerProcess = worker_factory("budget", LOYALTY_RULES=str(rules_file), LOYALTY_BATCH_SIZE="20")
    first.start()
    second = WorkerProcess(run_id=first.run_id, data_dir=tmp_path / "second", callback_secret=first.callback_secret,
                           admin_token=first.admin_token, extra_env=dict(first.extra_env))
    second.start()

    def payments_split() -> bool:
        mine = [{a for a in w.get("/healthz")[1]["assigned"] if ".payments:" in a} for w in (first, second)]
        return all(mine) and len(mine[0] | mine[1]) == 4 and not (mine[0] & mine[1])

    try:
        first.wait_until(payments_split, timeout=60, what="both workers to own payment partitions")
        members = [f"b-{i}" for i in range(100)]
        events = [pay(members[i % 100], 100 * (1 + i % 7)) for i in range(400)]  # 400 x 50 wanted, 5000 budget
        asyncio.run(produce(f"{first.run_id}.payments", events))

        def all_applied() -> bool:
            return sum(w.metrics()["events_applied_total"] for w in (first, second)) >= len(events)

        first.wait_until(all_applied, timeout=120, what="all events applied by the two workers")
        m1, m2 = first.metrics(), second.metrics()
        assert m1["events_applied_total"] > 0 and m2["events_applied_total"] > 0, "both workers took part"
        total = 0
        given = 0
        for mid in members:
            body = member(first.get(f"/v1/members/{mid}"))
            total += body["balance"]
        base = sum(e["amount_fen"] // 100 for e in events)
        given = total - base
        assert given == 5000, f"campaign gave {given} points against a budget of 5000"
    finally:
        second.stop()


def test_tier_upgrade_on_the_crossing_payment(worker_factory: Any, rules_file: Path) -> None:
    worker: WorkerProcess = worker_factory("tier", LOYALTY_RULES=str(rules_file))
    worker.start()
    m = f"m-{uuid.uuid4().hex[:8]}"
    events = [pay(m, 4_000_000), pay(m, 5_980_000), pay(m, 1_000)]  # 40,050 + 59,850 + 60 = 99,960
    asyncio.run(send_callbacks_in_order(worker.base_url, worker.callback_secret, [orjson.dumps(e) for e in events]))
    got = wait_events(worker, m, 3)
    assert got["tier"] == "normal" and got["points_to_next"] == 40
    crossing = pay(m, 10_000)
    assert worker.send_callback(crossing)[0] == 202
    got = wait_events(worker, m, 4)
    assert got["tier"] == "gold" and got["next_tier"] is None and got["review_at_ms"] is not None
    kinds = [(r["event_id"], r["kind"]) for r in got["recent_movements"]]
    assert (crossing["event_id"], "tier_change") in kinds and (crossing["event_id"], "earn") in kinds
    after = pay(m, 1_000)
    worker.send_callback(after)
    got = wait_events(worker, m, 5)
    assert got["recent_movements"][0]["points"] == 20 + 50  # double at gold, plus the flash bonus


def test_registration_binds_ids_and_credits_guest_payments(worker_factory: Any, rules_file: Path) -> None:
    worker: WorkerProcess = worker_factory("identity", LOYALTY_RULES=str(rules_file))
    worker.start()
    openid = f"o-{uuid.uuid4().hex[:10]}"
    m = f"m-{uuid.uuid4().hex[:8]}"
    guest = pay("x", 20_000, at="2026-11-20T12:00:00+08:00")
    del guest["member_id"]
    guest["payer"] = {"kind": "wechat", "id": openid}
    assert worker.send_callback(guest)[0] == 202
    worker.wait_until(lambda: worker.metrics()["events_guest_total"] >= 1, timeout=30, what="the guest fact")
    assert worker.get(f"/v1/members/{m}")[0] == 404
    reg = {"event_id": f"reg-{m}", "type": "register", "occurred_at": "2026-11-23T09:00:00+08:00",
           "member_id": m, "birthday": "1990-05-01", "external_ids": [{"kind": "wechat", "id": openid}]}
    body = orjson.dumps(reg)
    from streams.signing import signed_headers
    status, _ = worker.post("/v1/callbacks/member", body, signed_headers(worker.callback_secret, body))
    assert status == 202
    got = wait_events(worker, m, 2)  # the gift, then the credited guest payment
    assert got["balance"] == 100 + 200 + 50
    assert got["registered"] and got["birthday"] == "05-01"
    # A later payment by the same openid resolves to the member at the ingress.
    later = pay("x", 1_000)
    del later["member_id"]
    later["payer"] = {"kind": "wechat", "id": openid}
    assert worker.send_callback(later)[0] == 202
    got = wait_events(worker, m, 3)
    assert got["balance"] == 100 + 200 + 50 + 10 + 50
    assert got["available"] == got["balance"]  # the gift and the credited payment are spendable
    worker.wait_until(lambda: worker.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30,
                      what="Redis, wallet and ledger to agree")


def test_rules_reload_while_running_and_backtest(worker_factory: Any, rules_file: Path) -> None:
    worker: WorkerProcess = worker_factory("reload", LOYALTY_RULES=str(rules_file))
    worker.start()
    m = f"m-{uuid.uuid4().hex[:8]}"
    assert worker.send_callback(pay(m, 10_000))[0] == 202
    got = wait_events(worker, m, 1)
    assert got["recent_movements"][0]["rules_version"] == "motion-1"
    admin = {"Authorization": f"Bearer {worker.admin_token}"}
    write_rules(rules_file, "motion-2", rate=3)
    status, reply = worker.post("/v1/admin/rules/reload", b"", admin)
    assert (status, reply["version"]) == (200, "motion-2")
    assert worker.send_callback(pay(m, 10_000))[0] == 202
    got = wait_events(worker, m, 2)
    assert got["recent_movements"][0]["rules_version"] == "motion-2"
    assert got["recent_movements"][0]["points"] == 300 + 50
    rules_file.write_text("version = \\n")
    status, reply = worker.post("/v1/admin/rules/reload", b"", admin)
    assert status == 400 and reply["line"] == 1

    worker.wait_until(lambda: worker.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= 2,
                      timeout=30, what="the ledger")
    candidate = RULES.replace("VERSION", "cand").replace("RATE", "2")
    status, sim = worker.post("/v1/admin/rules/simulate", orjson.dumps(
        {"rules": candidate, "from": "2026-11-01T00:00:00+08:00", "to": "2026-12-01T00:00:00+08:00"}), admin)
    assert status == 200, sim
    assert sim["payments"] >= 2
    assert sim["live"]["points_by_bu"]["mall"] == 2 * (300 + 50)  # live rules now: rate 3
    assert sim["candidate"]["points_by_bu"]["mall"] == 2 * (200 + 50)
    assert ["flash", 100, 5000] in sim["candidate"]["campaigns"]

    # The same through the command line.
    import subprocess
    import sys

    cand_file = rules_file.parent / "candidate.toml"
    cand_file.write_text(candidate)
    out = subprocess.run([sys.executable, "-m", "streams.cli", "rules", "simulate", "--rules", str(cand_file),
                          "--from", "2026-11-01", "--to", "2026-12-01"], env=worker.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "points issued" in out.stdout and "flash" in out.stdout
    assert f"{2 * 350:>22,}{2 * 250:>26,}{-200:>+12,}" in out.stdout
