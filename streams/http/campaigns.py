"""Scheduled and recurring campaigns (docs/marketing.md): the rules' `[[scheduled_campaigns]]`
run by one leader's timer, on the engine's clock (streams/clock.py).

Every LOYALTY_SCHEDULE_INTERVAL seconds the leader looks for each campaign's run due now
(its latest scheduled time, at most LOYALTY_SCHEDULE_GRACE ago; streams/schedules.py). A run
not seen before has its audience evaluated in ClickHouse at the run's time
(sql/queries/campaign_audience.sql) and saved in Redis (`campaign-run:<campaign>:<run>`:
progress; its members written once in `campaign-run-members:<campaign>:<run>`), then each
member gets one `campaign_push` member event (event id `cp-<campaign>-<run>-<member>`), sent
page by page at LOYALTY_AUDIENCE_SEND_RATE members a
second, the progress saved after each page. The core decides per member (the frequency
cap, once per dormancy, the template's limit) and issues the coupon or the notice, which the
notifier pushes once. A run finished is written to the audit trail (action `campaign.run`),
so a run record lost from Redis is never run again; a run whose worker died (no progress for
LOYALTY_SCHEDULE_STALE seconds) is taken up again from its last page, the members of that
page sent again and applied once (their event ids).

GET /v1/admin/campaigns                             each campaign, its schedule and latest runs, and
                                                    the rules' saved audiences
GET /v1/admin/campaigns/{campaign}/preview          the audience now: count and a sample
GET /v1/admin/campaigns/{campaign}/runs/{run}       a run's progress
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import orjson
from faust.web import Request, Response, View

from streams import clock, schedules
from streams.app import app, leader_timer, member_events_topic, record_facts, runtime
from streams.http.common import error_response, json_response
from streams.inputs import is_valid_id
from streams.metrics import counters
from streams.state.jobs import public_job

log = logging.getLogger(__name__)

PAGE = 200
#: Runs this process is sending now ("campaign:run"), and their tasks.
_running: set[str] = set()
_tasks: set[asyncio.Task[None]] = set()
#: Runs found finished in the audit trail (their Redis record lost): not asked again.
_finished: set[str] = set()


def campaigns_of(rules: Any) -> list[dict[str, Any]]:
    """The rules' scheduled campaigns, as dicts (streams/schedules.py reads them)."""
    return orjson.loads(rules.scheduled_campaigns_json)  # type: ignore[no-any-return]


def now_ms() -> int:
    return clock.now_ms(runtime.settings.clock_file)


async def _load(campaign: str, run: str) -> dict[str, Any] | None:
    return await runtime.balances.load_job("campaign-run", f"{campaign}:{run}")


async def _save(rec: dict[str, Any], create: bool = False, members: list[str] | None = None) -> bool:
    return await runtime.balances.save_job("campaign-run", f"{rec['campaign']}:{rec['run']}", rec, create=create,
                                           members=members)


async def audience(campaign: dict[str, Any], at_ms: int) -> list[str]:
    """The members of the campaign's audience at `at_ms`, in member order."""
    rt = await runtime.started()
    params = schedules.audience_params(campaign["audience"], at_ms, rt.rules.utc_offset_minutes,
                                       rt.rules.points_validity_months, rt.rules.default_tier)
    return [r["member_id"] for r in await rt.ledger.query("campaign_audience", params)]


def _start(campaign: str, run: str) -> None:
    task = asyncio.ensure_future(_guarded(campaign, run))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _guarded(campaign: str, run: str) -> None:
    try:
        await send_run(campaign, run)
    except Exception:  # Kafka or Redis gone meanwhile: the leader's timer takes it up again
        log.exception("campaign %s run %s stopped; it is taken up again once it has made no progress for %.0f s",
                      campaign, run, runtime.settings.schedule_stale_s)


async def send_run(campaign: str, run: str) -> None:
    """Sends a run's pushes from its saved progress to the end, then records it finished."""
    name = f"{campaign}:{run}"
    if name in _running:
        return
    _running.add(name)
    try:
        rec = await _load(campaign, run)
        if rec is None or rec["status"] != "sending":
            return
        rate = max(1, runtime.settings.audience_send_rate)
        members = await runtime.balances.members_to_send("campaign-run", name, rec)
        if members is None:
            log.error("campaign %s run %s: %s; stopped", campaign, run, rec["failed"])
            return
        occurred = dt.datetime.fromtimestamp(rec["at_ms"] / 1000, dt.UTC).isoformat(timespec="milliseconds")
        while rec["done"] < len(members):
            page = members[rec["done"]:rec["done"] + PAGE]
            t0 = time.monotonic()
            futs = [await member_events_topic.send(key=m.encode(), force=True, value=orjson.dumps({
                "event_id": schedules.push_event_id(campaign, run, m), "type": "campaign_push", "member_id": m,
                "occurred_at": occurred, "campaign": campaign, "run": run})) for m in page]
            await asyncio.gather(*futs)
            rec["done"] += len(page)
            rec["beat_ms"] = int(time.time() * 1000)
            await _save(rec)
            counters["campaign_pushes_sent_total"] += len(page)
            await asyncio.sleep(max(0.0, len(page) / rate - (time.monotonic() - t0)))
        rec["status"], rec["finished_at_ms"] = "sent", int(time.time() * 1000)
        await record_facts([{
            "table": "audit_log", "event_id": f"campaign-run:{name}", "occurred_at_ms": rec["finished_at_ms"],
            "operator": "scheduler", "role": "system", "scope": "", "action": "campaign.run", "member_id": "",
            "target": name, "http_status": 200, "before": None,
            "after": {"members": len(members), "scheduled_at_ms": rec["at_ms"],
                      "started_at_ms": rec["started_at_ms"]}}])
        await _save(rec)
        counters["campaign_runs_finished_total"] += 1
        log.info("campaign %s run %s finished: its push sent to %d members", campaign, run, len(members))
    finally:
        _running.discard(name)


async def start_due(campaign: dict[str, Any], run: str, at_ms: int) -> str:
    """Starts a due run unless it has a record or finished before; says what happened:
    "started", "running", "sent", "finished before"."""
    cid, name = campaign["id"], f"{campaign['id']}:{run}"
    rec = await _load(cid, run)
    if rec is not None:
        return "running" if rec["status"] == "sending" else rec["status"]
    if name in _finished:
        return "finished before"
    rt = await runtime.started()
    if await rt.ledger.query("campaign_runs_done", {"target": name}):
        _finished.add(name)
        log.warning("campaign %s run %s finished before (the audit trail has it; its Redis record is gone): "
                    "not run again", cid, run)
        return "finished before"
    members = await audience(campaign, at_ms)
    wall = int(time.time() * 1000)
    rec = {"campaign": cid, "run": run, "at_ms": at_ms, "total": len(members), "done": 0, "status": "sending",
           "started_at_ms": wall, "beat_ms": wall}
    if not await _save(rec, create=True, members=members):
        return "running"
    counters["campaign_runs_started_total"] += 1
    log.info("campaign %s run %s (%s, due %s): members in its audience: %d", cid, run,
             schedules.describe(campaign["schedule"], rt.rules.utc_offset_minutes),
             schedules.local(at_ms, rt.rules.utc_offset_minutes).isoformat(timespec="minutes"), len(members))
    _start(cid, run)
    return "started"


async def tick() -> list[tuple[str, str, str]]:
    """One round of the scheduler: each campaign's due run started, stalled runs taken up
    again. Returns (campaign, run, what happened) of the runs due."""
    rt = await runtime.started()
    settings = rt.settings
    now = now_ms()
    out = []
    for c in campaigns_of(rt.rules):
        due = schedules.due_run(c, now, rt.rules.utc_offset_minutes, settings.schedule_grace_s * 1000)
        if due is not None:
            out.append((c["id"], due[0], await start_due(c, *due)))
    wall = int(time.time() * 1000)
    for rec in await rt.balances.open_jobs("campaign-run"):
        campaign, run = rec["campaign"], rec["run"]
        if f"{campaign}:{run}" not in _running \
                and wall - rec["beat_ms"] > settings.schedule_stale_s * 1000:
            if "members" in rec:  # an older record: its members moved out before it is saved
                await rt.balances.job_members("campaign-run", f"{campaign}:{run}", rec)
            log.warning("campaign %s run %s stalled at %d of %d: taken up again", campaign, run, rec["done"],
                        rec["total"])
            rec["beat_ms"] = wall
            await _save(rec)
            _start(campaign, run)
    return out


@leader_timer(runtime.settings.schedule_interval_s)
async def run_scheduled_campaigns() -> None:
    """The scheduler's round, on the group's leader."""
    try:
        await tick()
    except Exception:  # a timer that raises stops the worker: log, try again next round
        log.exception("the scheduled campaigns' round failed; the next round tries again")




def _find(campaign: str) -> dict[str, Any] | None:
    return next((c for c in campaigns_of(runtime.rules) if c["id"] == campaign), None)


@app.page("/v1/admin/campaigns")
class Campaigns(View):
    async def get(self, request: Request) -> Response:
        rt = await runtime.started()
        now, offset = now_ms(), rt.rules.utc_offset_minutes
        out = []
        for c in campaigns_of(rt.rules):
            runs = [public_job(rec) for rec in await rt.balances.jobs("campaign-run", prefix=f"{c['id']}:")]
            due = schedules.due_run(c, now, offset, rt.settings.schedule_grace_s * 1000)
            out.append({**c, "when": schedules.describe(c["schedule"], offset), "due_now": due and due[0],
                        "runs": sorted(runs, key=lambda r: r["run"], reverse=True)[:10]})
        return json_response(self, {"now_ms": now, "frequency_cap": rt.rules.frequency_cap, "campaigns": out,
                                    "audiences": orjson.loads(rt.rules.audiences_json)})


@app.page("/v1/admin/campaigns/{campaign}/preview")
class CampaignPreview(View):
    async def get(self, request: Request, campaign: str) -> Response:
        c = _find(campaign) if is_valid_id(campaign) else None
        if c is None:
            return error_response(self, 404, f"no scheduled campaign {campaign} in the rules in force", "campaign")
        members = await audience(c, now_ms())
        return json_response(self, {"campaign": campaign, "count": len(members), "sample": members[:20]})


@app.page("/v1/admin/campaigns/{campaign}/runs/{run}")
class CampaignRun(View):
    async def get(self, request: Request, campaign: str, run: str) -> Response:
        rec = await _load(campaign, run) if is_valid_id(campaign) and is_valid_id(run) else None
        if rec is None:
            return error_response(self, 404, f"no run {run} of campaign {campaign} (runs are kept 40 days)", "run")
        return json_response(self, public_job(rec))
