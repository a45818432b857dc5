"""The operators' dashboard in a real headless browser (Debian's chromium driven by
playwright), against a worker holding data sent through the real pipeline: the tiles
show the figures we know we sent, the charts have data, and a screenshot is saved."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess
from streams.settings import ROOT
from streams.signing import signed_headers

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = ROOT / ".local" / "artifacts" / "dashboard.png"


def test_dashboard_tiles_and_charts_in_a_real_browser(worker_factory: Any, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: scripts/test installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    w: WorkerProcess = worker_factory("dash")
    w.start()
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
    members = [f"d-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for m in members:
        body = orjson.dumps({"event_id": f"reg-{m}", "type": "register", "occurred_at": now.isoformat(),
                             "member_id": m})
        assert w.post("/v1/callbacks/member", body, signed_headers(w.callback_secret, body))[0] == 202
    amounts = [12_300, 45_600, 7_800, 20_000, 9_900, 30_000]
    for i, amount in enumerate(amounts):
        ev = {"event_id": f"dash-{uuid.uuid4().hex[:10]}", "type": "payment", "occurred_at": now.isoformat(),
              "member_id": members[i % len(members)], "bu_id": "sh-mall", "merchant_id": "sh-mall-shop-01",
              "category": "fashion", "amount_fen": amount, "channel": "wechat"}
        assert w.send_callback(ev)[0] == 202
    w.wait_until(lambda: w.get("/v1/admin/ledger/totals", admin=True)[1].get("payments", 0) >= len(amounts)
                 and w.get("/v1/admin/ledger/totals", admin=True)[1].get("member_events", 0) >= len(members),
                 timeout=180, what="the payments in ClickHouse")

    day = now.date().isoformat()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{w.base_url}/dashboard?from={day}&to={day}")
        page.fill("#token", "wrong-token")
        page.click("#apply")
        page.wait_for_selector("#status.error")
        assert "token" in page.inner_text("#status").lower()
        page.fill("#token", w.admin_token)
        page.click("#apply")
        page.wait_for_selector("body[data-loaded='1']", timeout=30_000)

        def tile(key: str) -> int:
            return int(page.get_attribute(f"[data-kpi='{key}']", "data-value") or "nan")
        assert tile("members.members") == len(members)
        assert tile("members.new_members") == len(members)
        assert tile("activity.active") == len(members)
        assert tile("sales.total_sales_fen") == sum(amounts)
        assert tile("sales.member_share_bp") == 10_000
        assert tile("sales.member_avg_ticket_fen") == sum(amounts) // len(amounts)
        # The text the operator reads, formatted.
        assert page.inner_text("[data-kpi='sales.total_sales_fen'] .value") == f"{sum(amounts) / 100:,.2f}"
        for chart in ("sales", "active", "points", "tiers"):
            assert int(page.get_attribute(f"svg[data-chart='{chart}']", "data-points") or 0) > 0, chart
        sales_point = page.get_attribute("svg[data-chart='sales'] circle.point", "data-value")
        assert float(sales_point or 0) == sum(amounts) / 100
        assert int(page.get_attribute("#settlement", "data-rows") or 0) > 0
        assert int(page.get_attribute("#liability", "data-rows") or 0) > 0
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000

    # `loyalty report`, the same figures in a terminal, as JSON and as CSV.
    import os
    import subprocess
    import sys
    env = {**os.environ, "LOYALTY_WEB_PORT": str(w.port), "LOYALTY_ADMIN_TOKEN": w.admin_token}
    cmd = [sys.executable, "-m", "streams.cli", "report", "--from", day, "--to", day]
    as_json = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    from streams.bi import KPIS

    assert f"[{len(KPIS)}/{len(KPIS)}]" in as_json.stderr  # progress, one line per KPI
    kpis = orjson.loads(as_json.stdout)["kpis"]
    assert kpis["sales"][0]["total_sales_fen"] == sum(amounts)
    assert kpis["repurchase"][0]["repeat_buyers"] == 2  # 6 payments over 4 members
    # The live liability (wallets in Redis) equals the points outstanding in the ledger.
    assert sum(x["points"] for x in kpis["liability"]) == kpis["points"][0]["outstanding"] > 0
    as_csv = subprocess.run([*cmd, "--csv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert f"sales,0,total_sales_fen,{sum(amounts)}" in as_csv.stdout.splitlines()
    text = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "Members and new members" in text.stdout and f"{sum(amounts):,}" in text.stdout
    bad = subprocess.run([*cmd[:-4], "--from", "2026-13-01"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "from" in bad.stderr
