"""Parking: entries and exits by plate become sessions; an exit is priced by the core
(schedule, tier, same-day spend, coupon) and, for a member who opted in, paid with
points through the wallet (ticketless exit). Session state lives in Redis, so a
worker restart loses nothing; every exit (and anomaly) is a row in ClickHouse. A member
who authorised WeChat Pay's business circle has the entry and exit told to WeChat Pay
(streams/circle.py, parking status sync).

Events of one plate are in order (Kafka key = plate). Each step is idempotent by
event id: a replayed entry or exit changes nothing twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any, cast

import orjson

import core_ext
from streams.app import (
    TRANSIENT,
    app,
    ledger_topic,
    member_events_topic,
    notifications_topic,
    parking_topic,
    record_binding,
    runtime,
    send_dead_letter,
)
from streams.circle import sync_parking
from streams.ingress import unpack_records
from streams.inputs import parking_event
from streams.metrics import counters
from streams.retry import retrying
from streams.state import EventMove
from streams.state.keys import PARKING_SESSION_S
from streams.transactions import Commit, transact

log = logging.getLogger(__name__)
#: How long an entry waits for its exit.
SESSION_TTL_S = PARKING_SESSION_S
DAY_MS = 86_400_000


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


async def handle_parking_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """Applies one validated entry or exit; returns the session row of an exit."""
    rt = await runtime.started()
    b = rt.balances
    plate, park, event_id = event["plate"], event["car_park"], event["event_id"]
    at = _ms(event["occurred_at"])
    session_key = b.parking_key(park, plate)
    if event["type"] == "entry":
        current = cast(dict[str, str], await b.redis.hgetall(session_key))
        if current.get("entry_event") == event_id:
            return None  # replayed
        anomaly = None
        if current:
            anomaly = _session(current["entry_event"] + ":no-exit", "double_entry", plate, park, "",
                               int(current["entry_ms"]), at, None)
        pipe = b.redis.pipeline(transaction=True)
        pipe.hset(session_key, mapping={"entry_ms": at, "entry_event": event_id, "gate": event["gate"]})
        # A car that never exits (a lost ticket, a missed exit event) leaves no key forever:
        # an exit after this is priced as one without an entry (the lost-ticket rule).
        pipe.expire(session_key, SESSION_TTL_S)
        await pipe.execute()
        # Durable (a rebuild after Redis lost it finds the car still in): the session as Redis has it.
        await record_binding("parking", session_key[len(b.ns) + 1:], "",
                             orjson.dumps({"entry_ms": at, "entry_event": event_id, "gate": event["gate"]}).decode())
        await sync_parking((await b.plate_binding(plate)).get("member_id"), plate, "IN", event["occurred_at"])
        return anomaly
    if await b.redis.exists(b.parking_closed_key(event_id)):
        return None  # replayed exit
    current = cast(dict[str, str], await b.redis.hgetall(session_key))
    # No entry on record: priced as a whole day (the lost-ticket rule).
    entry_ms = int(current["entry_ms"]) if current else at - DAY_MS
    status = "closed" if current else "exit_without_entry"
    binding = await b.plate_binding(plate)
    member_id = binding.get("member_id")
    auto_pay = binding.get("auto_pay") == "1"
    if member_id is None:
        fee_json, _, _ = core_ext.parking_exit(rt.rules, park, event_id, None, None, entry_ms, at, 0, False)
    else:
        payer = member_id

        async def decide(seq: int, state: str | None) -> str | Commit[str]:
            record = await b.event_record(payer, event_id)
            if record:
                return record.result  # replayed exit: the fee it was charged
            fee_json, new_state, rows = core_ext.parking_exit(rt.rules, park, event_id, payer, state, entry_ms, at,
                                                              0, auto_pay)
            if rows is None:
                return fee_json  # nothing to deduct
            if new_state is None:
                raise RuntimeError("parking_exit answered rows without a state")
            fee = orjson.loads(fee_json)

            async def done() -> str:
                return fee_json
            return Commit(new_state, done, EventMove(event_id, "redeem", -fee["points_used"], rows,
                                                     fee["points_value_fen"], None, 0, fee_json))
        # A member busy for every try raises MemberBusy (transient): the exit is retried.
        fee_json = await transact(member_id, decide)
    fee = orjson.loads(fee_json)
    session = _session(event_id, status, plate, park, member_id or "", entry_ms, at, fee)
    fut = await ledger_topic.send(value=orjson.dumps({"ledger": [], "guests": [], "parking": [session]}), force=True)
    await fut
    notice = {"kind": "parking_exit", "event_id": event_id, "member_id": member_id, "plate": plate,
              "car_park": park, "minutes": fee["minutes"], "due_fen": fee["due_fen"]}
    fut = await notifications_topic.send(key=plate.encode(), value=orjson.dumps(notice), force=True)
    await fut
    if member_id is not None and "parking_exit" in rt.rules.trigger_kinds:
        # The member's exit, in order with their other events: marketing triggers (a coupon).
        exit_id = f"px:{event_id}"
        if len(exit_id) > 64:
            exit_id = "px:" + hashlib.sha256(event_id.encode()).hexdigest()[:40]
        member_event = {"event_id": exit_id, "type": "parking_exit", "member_id": member_id,
                        "occurred_at": event["occurred_at"]}
        fut = await member_events_topic.send(key=member_id.encode(), value=orjson.dumps(member_event), force=True)
        await fut
    await b.redis.set(b.parking_closed_key(event_id), 1, ex=30 * 86_400)
    await b.redis.delete(session_key)
    await record_binding("parking", session_key[len(b.ns) + 1:], "", "")  # closed
    await sync_parking(member_id, plate, "OUT", event["occurred_at"])
    counters["parking_exits_total"] += 1
    log.info("exit %s of %s at %s: fee %d, points %d, due %d", event_id, plate, park, fee["fee_fen"],
             fee["points_used"], fee["due_fen"])
    return session


def _session(event_id: str, status: str, plate: str, park: str, member_id: str, entry_ms: int, exit_ms: int,
             fee: dict[str, Any] | None) -> dict[str, Any]:
    fee = fee or {"minutes": 0, "gross_fee_fen": 0, "fee_fen": 0, "points_used": 0, "points_value_fen": 0,
                  "due_fen": 0, "deductions": []}
    return {"event_id": event_id, "status": status, "plate": plate, "car_park": park, "member_id": member_id,
            "entry_ms": entry_ms, "exit_ms": exit_ms, "minutes": fee["minutes"],
            "gross_fee_fen": fee["gross_fee_fen"], "fee_fen": fee["fee_fen"], "points_used": fee["points_used"],
            "points_value_fen": fee["points_value_fen"], "due_fen": fee["due_fen"], "deductions": fee["deductions"]}


@app.agent(parking_topic)
async def track_parking(stream):  # type: ignore[no-untyped-def]
    """Entries and exits, one at a time (a car park's traffic is light); retried on failure."""
    async for records in stream.take(100, within=0.05):
        rt = await runtime.started()
        for body in unpack_records(records):
            event, field, reason = parking_event(body, set(rt.rules.car_parks))
            if event is None:
                # A poison message (not from our ingress, or rules changed): kept, never retried.
                await send_dead_letter(source="parking", reason=f"{field}: {reason}", field=field, body=body)
                continue
            try:
                # Never let Faust ack an unapplied event (faust-streaming #606): transient
                # failures are retried until they pass.
                async for attempt in retrying(f"parking event {event.get('event_id')}", TRANSIENT, initial_s=0.2,
                                              max_s=5.0):
                    with attempt:
                        anomaly = await handle_parking_event(event)
                        if anomaly is not None and event["type"] == "entry":
                            fut = await ledger_topic.send(value=orjson.dumps(
                                {"ledger": [], "guests": [], "parking": [anomaly]}), force=True)
                            await fut
            except Exception as exc:
                log.exception("parking event %s failed on its own; dead-lettering it", event.get("event_id"))
                await send_dead_letter(source="parking", reason=f"internal error: {exc!r}",
                                       event_id=event.get("event_id"), body=body)
