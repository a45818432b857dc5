"""Scale-out over the real services: two accrual workers share the partitions of one
deployment while a third process (the ledger role) holds the embedded ClickHouse store;
every event is applied once and the ledger equals Redis."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.workers import WorkerProcess

pytestmark = pytest.mark.integration


def payment(member: str, amount: int) -> dict[str, Any]:
    return {"event_id": f"so-{uuid.uuid4().hex[:12]}", "type": "payment", "occurred_at": "2026-11-23T11:00:00+08:00",
            "member_id": member, "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01", "category": "fashion",
            "amount_fen": amount, "channel": "wechat"}


def test_two_accrual_workers_share_partitions_and_one_holds_the_ledger(services: None, tmp_path: Path) -> None:
    run_id = f"t-scale-{uuid.uuid4().hex[:8]}"
    ledger = WorkerProcess(run_id=run_id, data_dir=tmp_path / "ledger", extra_env={"LOYALTY_ROLES": "ledger"})
    accrual_env = {"LOYALTY_ROLES": "accrual,notifier,parking"}
    first = WorkerProcess(run_id=run_id, data_dir=tmp_path / "a1", callback_secret=ledger.callback_secret,
                          admin_token=ledger.admin_token, extra_env=accrual_env)
    second = WorkerProcess(run_id=run_id, data_dir=tmp_path / "a2", callback_secret=ledger.callback_secret,
                           admin_token=ledger.admin_token, extra_env=accrual_env)
    workers = [ledger, first, second]
    try:
        for w in workers:
            w.start()
        members = [f"so-{uuid.uuid4().hex[:8]}" for _ in range(24)]
        sent: dict[str, int] = {}
        # Waves until both accrual workers have applied events (the group settles after both join).
        deadline = time.monotonic() + 90
        wave = 0
        while True:
            for i, m in enumerate(members):
                target = first if (i + wave) % 2 else second
                status, _ = target.send_callback(payment(m, 10_000 + 100 * wave))
                assert status == 202
                sent[m] = sent.get(m, 0) + 1
            wave += 1
            time.sleep(1.0)
            if first.metrics()["events_applied_total"] > 0 and second.metrics()["events_applied_total"] > 0:
                break
            assert time.monotonic() < deadline, "one accrual worker never got a partition"
        total = sum(sent.values())
        first.wait_until(lambda: first.metrics()["events_applied_total"] + second.metrics()["events_applied_total"]
                         == total, timeout=90, what="every event applied once by one of the two")
        assert ledger.metrics()["events_applied_total"] == 0  # it runs no accrual agent
        for m in members:
            assert first.get(f"/v1/members/{m}")[1]["events"] == sent[m]
        ledger.wait_until(lambda: ledger.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) == total,
                          timeout=90, what="the ledger rows in the ledger worker's store")
        rec = ledger.get("/v1/admin/reconcile", admin=True)[1]
        assert rec["clean"] and rec["redis_total"] == rec["ledger_total"] > 0, rec
        # An accrual worker does not hold the embedded store: it says so instead of failing.
        status, body = first.get("/v1/admin/ledger/totals", admin=True)
        assert status == 503 and "held by the ledger worker" in body["error"]
    finally:
        for w in workers:
            w.stop()
        ledger.cleanup()
