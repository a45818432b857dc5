"""End to end over real Kafka, Redis and ClickHouse: a signed callback becomes points."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess, read_dead_letters, send_callbacks_in_order
from streams.settings import ROOT, Settings
from tests import reference

pytestmark = pytest.mark.integration
REF = reference.RefRules((ROOT / "rules" / "demo.toml").read_text())


def payment(member: str, amount: int = 12_345, **over: Any) -> dict[str, Any]:
    ev = {
        "event_id": f"tx-{uuid.uuid4().hex[:12]}",
        "type": "payment",
        "occurred_at": "2026-11-23T10:15:00+08:00",
        "member_id": member,
        "bu_id": "sh-mall",
        "merchant_id": "shop-7",
        "category": "fashion",
        "amount_fen": amount,
        "channel": "wechat",
    }
    ev.update(over)
    return ev


def refund(of: dict[str, Any], amount: int) -> dict[str, Any]:
    return {
        **of,
        "event_id": f"{of['event_id']}-rf-{amount}",
        "type": "refund",
        "refund_of": of["event_id"],
        "amount_fen": amount,
    }


def new_member() -> str:
    return f"m-{uuid.uuid4().hex[:10]}"


def balance_of(worker: WorkerProcess, member: str) -> int | None:
    status, body = worker.get(f"/v1/members/{member}")
    return int(body["balance"]) if status == 200 else None


def wait_balance(worker: WorkerProcess, member: str, expected: int) -> dict[str, Any]:
    worker.wait_until(
        lambda: balance_of(worker, member) == expected, timeout=60, what=f"balance of {member} to be {expected}"
    )
    return worker.get(f"/v1/members/{member}")[1]


def wait_quiet(worker: WorkerProcess) -> None:
    """Until every accepted callback has been applied or refused, and the ledger has it."""

    def settled() -> bool:
        m = worker.metrics()
        done = (m["events_applied_total"] + m["events_duplicate_total"] + m["events_rejected_total"]
                + m["events_guest_total"])
        if done < m["callbacks_accepted_total"] or m.get("accrual_sends_in_flight", 0):
            return False
        lag = [v for k, v in m.items() if k.startswith("consumer_lag{")]
        if any(lag):  # the ledger's consumer too: its rows are in ClickHouse when it commits
            return False
        _, totals = worker.get("/v1/admin/ledger/totals", admin=True)
        return int(totals.get("events", 0)) >= m["events_applied_total"]

    worker.wait_until(settled, timeout=90, what="the pipeline to settle")


def dead_letters_for(worker: WorkerProcess, marker: str) -> list[dict[str, Any]]:
    records = asyncio.run(read_dead_letters(Settings.from_env().kafka_bootstrap, f"{worker.run_id}.dead-letter"))
    return [r for r in records if marker in (r.get("body") or "")]


def test_signed_callback_becomes_points_visible_in_member_api(worker: WorkerProcess) -> None:
    member = new_member()
    status, body = worker.send_callback(payment(member, 12_345))
    assert status == 202 and body["status"] == "accepted"
    got = wait_balance(worker, member, 123)  # mall: 1 point per yuan, rounded down
    assert got["tier"] == "normal"


def test_same_callback_twice_counts_once(worker: WorkerProcess) -> None:
    member = new_member()
    ev = payment(member, 50_000, bu_id="sh-hotel", category="room")
    assert worker.send_callback(ev)[0] == 202
    assert worker.send_callback(ev)[0] == 202
    wait_balance(worker, member, 1_000)
    marker = payment(member, 100)  # a later event of the same member: the duplicate is behind us
    assert worker.send_callback(marker)[0] == 202
    got = wait_balance(worker, member, 1_001)
    assert got["events"] == 2


def test_same_id_with_another_body_is_a_conflict_dead_lettered_and_counted(worker: WorkerProcess) -> None:
    """A payment resent under its id with another amount: the first stays, the second goes
    to the dead-letter topic naming both digests and the field that differs."""
    member = new_member()
    ev = payment(member, 50_000, bu_id="sh-hotel", category="room")
    before = worker.metrics().get("events_mismatched_total", 0)
    assert worker.send_callback(ev)[0] == 202
    wait_balance(worker, member, 1_000)
    changed = {**ev, "amount_fen": 60_000}
    assert worker.send_callback(changed)[0] == 202
    assert worker.send_callback(ev)[0] == 202  # the same body again: a plain duplicate
    marker = payment(member, 100)  # a later event of the same member: the resends are behind us
    assert worker.send_callback(marker)[0] == 202
    got = wait_balance(worker, member, 1_001)
    assert got["events"] == 2
    worker.wait_until(lambda: len(dead_letters_for(worker, ev["event_id"])) == 1, timeout=30,
                      what="the conflict's dead letter")
    letter = dead_letters_for(worker, ev["event_id"])[0]
    assert (letter["source"], letter["field"], letter["event_id"]) == ("accrual", "event_id", ev["event_id"]), letter
    assert "60000" in letter["body"] and "differs in amount_fen" in letter["reason"], letter
    assert worker.metrics()["events_mismatched_total"] == before + 1


def test_refund_claws_back_points(worker: WorkerProcess) -> None:
    member = new_member()
    pay = payment(member, 10_000)
    assert worker.send_callback(pay)[0] == 202
    wait_balance(worker, member, 100)
    assert worker.send_callback(refund(pay, 2_500))[0] == 202
    wait_balance(worker, member, 75)
    assert worker.send_callback(refund(pay, 7_500))[0] == 202
    got = wait_balance(worker, member, 0)
    assert got["debited"] == got["clawed_back"] == 100


def test_gold_member_earns_one_and_a_half(worker: WorkerProcess) -> None:
    member = new_member()
    status, _ = worker.post(
        f"/v1/admin/members/{member}/tier", b'{"tier":"gold"}', {"Authorization": f"Bearer {worker.admin_token}"}
    )
    assert status == 200
    assert worker.send_callback(payment(member, 1_099))[0] == 202
    got = wait_balance(worker, member, 16)
    assert got["tier"] == "gold" and got["override_until_ms"] is not None
    assert got["recent_movements"][0]["explain"] == [
        {"rule": "base", "points": 10}, {"rule": "tier", "id": "gold", "points": 6}]


def test_bad_body_gets_400_naming_the_field_and_one_dead_letter(worker: WorkerProcess) -> None:
    marker = f"bad-{uuid.uuid4().hex[:8]}"
    ev = payment(new_member(), -5, event_id=marker)
    status, body = worker.send_callback(ev)
    assert status == 400
    assert body["field"] == "amount_fen" and "must be > 0" in body["error"]
    worker.wait_until(lambda: len(dead_letters_for(worker, marker)) >= 1, timeout=30, what="dead letter")
    records = dead_letters_for(worker, marker)
    assert len(records) == 1
    assert records[0]["source"] == "ingress" and "amount_fen" in records[0]["reason"]


def test_bad_signature_gets_401_and_changes_nothing(worker: WorkerProcess) -> None:
    member = new_member()
    marker = f"forged-{uuid.uuid4().hex[:8]}"
    status, body = worker.send_callback(payment(member, 99_999, event_id=marker), secret="guess")
    assert status == 401 and body["field"] == "X-Signature"
    worker.wait_until(lambda: len(dead_letters_for(worker, marker)) == 1, timeout=30, what="dead letter")
    assert worker.get(f"/v1/members/{member}")[0] == 404


def test_unknown_business_unit_is_dead_lettered_by_the_agent(worker: WorkerProcess) -> None:
    marker = f"nobu-{uuid.uuid4().hex[:8]}"
    assert worker.send_callback(payment(new_member(), 100, event_id=marker, bu_id="closed-store"))[0] == 202
    worker.wait_until(lambda: len(dead_letters_for(worker, marker)) == 1, timeout=30, what="dead letter")
    assert "unknown business unit" in dead_letters_for(worker, marker)[0]["reason"]


def test_random_callbacks_redis_equals_ledger_equals_reference(worker: WorkerProcess) -> None:
    rng = random.Random(7)
    members = [new_member() for _ in range(30)]
    tiers = {m: rng.choice([None, "silver", "gold", "diamond"]) for m in members}
    stored: dict[str, tuple[int, str | None]] = {}
    for m, t in tiers.items():
        if t:
            status, reply = worker.post(f"/v1/admin/members/{m}/tier",
                                        orjson.dumps({"tier": t, "until": "2030-01-01T00:00:00+08:00"}),
                                        {"Authorization": f"Bearer {worker.admin_token}"})
            assert status == 200 and reply["applied"], reply
            until = reference.parse_ms("2030-01-01T00:00:00+08:00")
            stored[m] = (1, orjson.dumps({"override_tier": t, "override_until_ms": until}).decode())
    payments = [payment(rng.choice(members), rng.randint(1, 300_000),
                        bu_id=rng.choice(["sh-mall", "sh-hotel", "sh-cvs", "sh-park", "sh-office"]),
                        category=rng.choice(["fashion", "jewelry", "tobacco", "food"]),
                        occurred_at=f"2026-11-{rng.randint(20, 23)}T{rng.randint(10, 21)}:00:00+08:00")
                for _ in range(300)]
    payments.sort(key=lambda e: e["occurred_at"])
    refunds = [refund(p, rng.randint(1, p["amount_fen"])) for p in rng.sample(payments, 30)]
    dups = rng.sample(payments, 20)
    events = payments + refunds
    bodies = [orjson.dumps(e) for e in payments + dups + refunds]
    results = asyncio.run(send_callbacks_in_order(worker.base_url, worker.callback_secret, bodies))
    assert {s for s, _ in results} == {202}
    wait_quiet(worker)

    outcomes, _ = reference.evaluate(REF, events, [False] * len(events), [None] * len(events), stored, {})
    expected: dict[str, int] = {}
    for ev, out in zip(events, outcomes, strict=True):
        assert out.status == "apply"
        expected[ev["member_id"]] = expected.get(ev["member_id"], 0) + out.points
    for m in members:
        assert (balance_of(worker, m) or 0) == expected.get(m, 0), m
    status, rec = worker.get("/v1/admin/reconcile", admin=True)
    assert status == 200 and rec["clean"], rec["mismatches"]
    assert rec["redis_total"] == rec["ledger_total"]


def test_member_api_errors(worker: WorkerProcess) -> None:
    assert worker.get("/v1/members/nobody-here")[0] == 404
    assert worker.get("/v1/members/" + "x" * 65)[0] == 400
    assert worker.get("/v1/members/a%7Bb%7D")[0] in (400, 404)
    assert worker.get("/v1/admin/reconcile", admin=False)[0] == 401
    assert worker.get("/v1/members/nobody-here", admin=False)[0] == 401  # credentials first


def test_oversized_body_is_refused_with_413(worker: WorkerProcess) -> None:
    body = orjson.dumps(payment(new_member(), 100, channel="x" * 70_000))
    status, reply = worker.send_callback(body)
    assert status == 413 and "larger than" in reply["error"]


def test_redis_holds_only_keys_of_known_families_each_bounded(worker: WorkerProcess) -> None:
    """After this module's traffic (payments, refunds, duplicates, guests, holds...)."""
    assert worker.keys_out_of_bounds() == []


def test_every_topic_keeps_its_records_as_long_as_set_on_purpose(worker: WorkerProcess) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.kafka_topics import RETENTION_DAYS

    async def retention() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=Settings.from_env().kafka_bootstrap)
        await admin.start()
        try:
            names = [f"{worker.run_id}.{t}" for t in RETENTION_DAYS]
            answers = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            out = {}
            for answer in answers:
                for resource in answer.resources:
                    entries = {e[0]: e[1] for e in resource[4]}
                    out[resource[3].split(".", 1)[1]] = int(entries["retention.ms"])
            return out
        finally:
            await admin.close()

    assert asyncio.run(retention()) == {t: days * 86_400_000 for t, days in RETENTION_DAYS.items()}
