"""`loyalty backup` / `loyalty restore` of the ClickHouse store: a backup taken through the
worker that holds the embedded store, restored into a fresh directory, and a second worker
on the restored store rebuilding Redis from it: every member as before."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess, send_callbacks_in_order
from streams.settings import ROOT

pytestmark = pytest.mark.integration
FIELDS = ("balance", "available", "pending", "lots", "tier", "earned", "debited", "events")


def cli(w: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=w.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def day(tag: str) -> list[dict[str, Any]]:
    events = []
    for i in range(120):
        events.append({"event_id": f"{tag}-{i}", "type": "payment", "occurred_at": "2026-11-23T12:00:00+08:00",
                       "member_id": f"{tag}-m-{i % 20}", "bu_id": ("sh-mall", "sh-hotel")[i % 2],
                       "merchant_id": "shop-1", "category": ("fashion", "room")[i % 2],
                       "amount_fen": 5_000 + 137 * i, "channel": "wechat"})
    for i in range(0, 120, 12):  # some refunded, in part
        events.append({**events[i], "event_id": f"{tag}-{i}-rf", "type": "refund", "refund_of": f"{tag}-{i}",
                       "amount_fen": 2_000})
    return events


def test_a_backup_restored_into_a_fresh_store_rebuilds_every_member(worker_factory: Any, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    w: WorkerProcess = worker_factory("backup", LOYALTY_BACKUP_DIR=str(backups))
    w.start()
    tag = f"bk-{uuid.uuid4().hex[:6]}"
    events = day(tag)
    results = asyncio.run(send_callbacks_in_order(w.base_url, w.callback_secret, [orjson.dumps(e) for e in events]))
    assert all(status == 202 for status, _ in results)
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals", admin=True)[1].get("events", 0) >= len(events), 120,
                 "the ledger has the day")
    w.wait_caught_up()
    members = sorted({e["member_id"] for e in events})
    before = {m: {k: w.get(f"/v1/members/{m}")[1][k] for k in FIELDS} for m in members}
    totals = w.get("/v1/admin/ledger/totals", admin=True)[1]

    out = cli(w, "backup", "--name", "first")
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = orjson.loads((backups / "first" / "manifest.json").read_bytes())
    assert manifest["tables"]["ledger"]["rows"] >= len(events) and "settlement_lines" in manifest["tables"]
    assert "daily_points" not in manifest["tables"], "a view's target is filled again by the view"
    again = cli(w, "backup", "--name", "first")
    assert again.returncode == 1 and "holds a backup already" in again.stderr

    damaged = tmp_path / "damaged"
    shutil.copytree(backups / "first", damaged)
    blob = bytearray((damaged / "ledger.native").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (damaged / "ledger.native").write_bytes(bytes(blob))
    target = f"chdb://{tmp_path / 'restored'}"
    bad = cli(w, "restore", str(damaged), "--dsn", target)
    assert bad.returncode == 1 and "damaged" in bad.stderr

    out = cli(w, "restore", str(backups / "first"), "--dsn", target)
    assert out.returncode == 0, out.stdout + out.stderr
    assert cli(w, "restore", str(backups / "first"), "--dsn", target).returncode == 1, "the store is not empty"

    # A worker of its own (new topics, an empty Redis namespace) on the restored store.
    w2: WorkerProcess = worker_factory("restored", LOYALTY_CLICKHOUSE_DSN=target)
    w2.start()
    assert w2.get(f"/v1/members/{members[0]}")[0] == 404
    assert w2.get("/v1/admin/ledger/totals", admin=True)[1] == totals
    out = cli(w2, "rebuild")
    assert out.returncode == 0, out.stdout + out.stderr
    after = {m: {k: w2.get(f"/v1/members/{m}")[1][k] for k in FIELDS} for m in members}
    assert after == before
    assert w2.get("/v1/admin/reconcile", admin=True)[1]["clean"]
