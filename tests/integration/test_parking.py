"""Parking over the real services: a member's car exits with the fee reduced by tier,
same-day spend and points (the wallet and the ledger show the points used); a guest
pays the schedule; replays change nothing; anomalies are recorded."""

from __future__ import annotations

import datetime as dt
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.workers import WorkerProcess
from streams.signing import signed_headers
from tests.fixtures import rules_toml

pytestmark = pytest.mark.integration

RULES = rules_toml("""
version = "park-1"
utc_offset_minutes = 480
""", "mall", "normal_tier", tail="""
[formats.parking]
points = 0
per_fen = 100
[[business_units]]
id = "park"
format = "parking"
[[tiers]]
id = "gold"
multiplier_pct = 100
qualify_points = 100000
free_parking_minutes = 60
[wallet.default_rate]
points = 100
value_fen = 100
[[parking.car_parks]]
bu = "park"
free_minutes = 15
price_per_hour_fen = 1000
daily_cap_fen = 6000
spend_bu = "mall"
spend_steps = [{ min_spend_fen = 20000, free_minutes = 120 }]
""")


def iso(minutes_ago: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")


def park_event(w: WorkerProcess, kind: str, plate: str, minutes_ago: float, event_id: str | None = None
               ) -> tuple[int, Any]:
    body = orjson.dumps({"event_id": event_id or f"{kind}-{uuid.uuid4().hex[:10]}", "type": kind,
                         "occurred_at": iso(minutes_ago), "plate": plate, "car_park": "park", "gate": "g1"})
    return w.post("/v1/callbacks/parking", body, signed_headers(w.callback_secret, body))


def sessions(w: WorkerProcess, plate: str) -> list[dict[str, Any]]:
    status, body = w.get(f"/v1/parking/sessions?plate={urllib.parse.quote(plate)}")
    assert status == 200, body
    return body["sessions"]  # type: ignore[no-any-return]


def test_member_exit_reduced_by_tier_spend_and_points(worker_factory: Any, tmp_path: Path) -> None:
    rules = tmp_path / "park.toml"
    rules.write_text(RULES)
    w: WorkerProcess = worker_factory("park", LOYALTY_RULES=str(rules))
    w.start()
    m = f"p-{uuid.uuid4().hex[:8]}"
    plate = "沪A" + uuid.uuid4().hex[:5].upper()
    admin = {"Authorization": f"Bearer {w.admin_token}"}
    assert w.post(f"/v1/admin/members/{m}/tier", b'{"tier": "gold"}', admin)[1]["applied"]
    pay = {"event_id": f"tx-{m}", "type": "payment", "occurred_at": iso(1), "member_id": m, "bu_id": "mall",
           "merchant_id": "s1", "category": "fashion", "amount_fen": 25_000, "channel": "wechat"}
    assert w.send_callback(pay)[0] == 202  # 250 points and 250 yuan spent in the mall today
    w.wait_until(lambda: w.get(f"/v1/members/{m}")[1].get("balance") == 250, timeout=30, what="the payment")
    body = orjson.dumps({"plate": plate, "auto_pay": True})
    assert w.post(f"/v1/members/{m}/plates", body, w.pos_headers(body))[0] == 200
    other = orjson.dumps({"plate": plate})
    assert w.post("/v1/members/someone-else/plates", other, w.pos_headers(other))[0] == 409

    entry = f"in-{m}"
    assert park_event(w, "entry", plate, 241, entry)[0] == 202  # 4 h 1 min
    assert park_event(w, "entry", plate, 241, entry)[0] == 202  # a replay
    quote_path = f"/v1/parking/quote?plate={urllib.parse.quote(plate)}&car_park=park"
    w.wait_until(lambda: w.get(quote_path)[0] == 200, timeout=30, what="the entry")
    quote = w.get(quote_path)[1]
    # 242 min - 60 (gold) - 120 (250 yuan spent) = 62 min: 2 started hours = 2,000 fen;
    # 250 points pay 2.50 yuan of it.
    assert quote["fee_fen"] == 2000 and quote["points_used"] == 250 and quote["due_fen"] == 1750
    assert [d["rule"] for d in quote["deductions"]] == ["free", "tier", "spend"]

    exit_id = f"out-{m}"
    assert park_event(w, "exit", plate, 0, exit_id)[0] == 202
    w.wait_until(lambda: len(sessions(w, plate)) == 1, timeout=30, what="the session row")
    assert park_event(w, "exit", plate, 0, exit_id)[0] == 202  # a replayed exit changes nothing
    w.wait_caught_up()  # the replay is processed
    (s,) = sessions(w, plate)
    assert (s["status"], s["fee_fen"], s["points_used"], s["points_value_fen"], s["due_fen"]) == (
        "closed", 2000, 250, 250, 1750)
    got = w.get(f"/v1/members/{m}")[1]
    assert got["balance"] == 0 and got["recent_movements"][0]["explain"][0]["rule"] == "parking_offset"
    w.wait_until(lambda: w.get("/v1/admin/reconcile", admin=True)[1]["clean"], timeout=30, what="reconcile")

    guest = "沪B" + uuid.uuid4().hex[:5].upper()
    assert park_event(w, "exit", guest, 0)[0] == 202  # no entry on record: a whole day
    assert park_event(w, "entry", guest, 100)[0] == 202
    assert park_event(w, "entry", guest, 90)[0] == 202  # double entry: the first is recorded
    assert park_event(w, "exit", guest, 0)[0] == 202  # 90 min, guest: 2 h = 2,000
    w.wait_until(lambda: len(sessions(w, guest)) == 3, timeout=30, what="the guest's sessions")
    by_status = {x["status"]: x for x in sessions(w, guest)}
    assert by_status["exit_without_entry"]["fee_fen"] == 6000
    assert by_status["closed"]["fee_fen"] == 2000 and by_status["closed"]["due_fen"] == 2000
    assert "double_entry" in by_status
    assert park_event(w, "exit", "x", 0)[0] == 400
    # An open session (a car inside) and everything else the day left, each bounded.
    inside = "沪C" + uuid.uuid4().hex[:5].upper()
    assert park_event(w, "entry", inside, 10)[0] == 202
    w.wait_caught_up()
    assert w.keys_out_of_bounds() == []
