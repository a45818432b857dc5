"""The records the engine keeps per member and their shapes: a movement of an HTTP
operation (EventMove), a member's write (MemberMoves), event records as the HTTP paths
read them (the accrual layouts are read by the core, record.rs; HTTP operations' records
are JSON, here), guest facts and the member API's history entries."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

import core_ext


@dataclass
class EventMove:
    """One applied operation of the HTTP API (redemption, reversal, coupon, engagement, parking exit)."""

    event_id: str
    kind: str
    points: int
    rows: str
    amount_fen: int
    refund_of: str | None
    clawback_points: int
    result: str = ""
    #: What the record keeps as points (default: the movement itself), points used.
    record_points: int | None = None
    used: int = 0
    returned: int = 0
    #: Stored value moved (fen), kept apart from points.
    sv_fen: int = 0


@dataclass
class MemberMoves:
    member_id: str
    expected_seq: int
    state_json: str
    review_at_ms: int | None
    next_check_ms: int | None = None
    events: list[EventMove] = field(default_factory=list)
    #: Budgets consumed (campaigns, stocks): reserved before the write, settled after.
    campaigns: dict[str, int] = field(default_factory=dict)
    #: Keep the rows, and the member's state row, in the member's outbox until the caller
    #: has them in Kafka.
    outbox: bool = False
    #: Set by the write (with `outbox`): the state row and the records' rows it kept in the
    #: outbox under `state_entry`, which the caller sends.
    durable_rows: str = ""

    @property
    def state_entry(self) -> str:
        """The member-outbox field of this write's state row (one per sequence number, so a
        later write never drops an earlier one not yet sent)."""
        return f"~state:{self.expected_seq + 1}"

    @cached_property
    def state_row(self) -> str:
        """This write's `member_states` row (made once: the outbox and the send agree)."""
        return state_row(self.member_id, self.expected_seq + 1, self.state_json)


@dataclass(frozen=True)
class EventRecord:
    """An applied event's record, as the HTTP paths read it: what makes a retry answer the
    same and a refund or reversal undo exactly what was booked. The core reads the
    accrual's layouts (record.rs spells them: payment, refund, member); an HTTP operation's
    record is JSON, its `kind` the operation (redeem, sv_pay, exchange_out...)."""

    kind: str
    #: When it was applied (None: before records kept the time).
    applied_at_ms: int | None
    amount: int = 0
    points: int = 0
    used: int = 0
    refunded_amount: int = 0
    refunded_points: int = 0
    returned_used: int = 0
    #: An HTTP operation's answer (JSON), repeated to a retry.
    result: str = "{}"
    #: A redemption's ledger rows (JSON): its reversal gives back the very lots they took.
    rows: str = ""
    #: Every field as stored, as text (a payment's booking: bu_id, merchant_id, category, format).
    fields: dict[str, str] = field(default_factory=dict, compare=False)

    def json(self) -> Any:
        """The operation's answer, decoded."""
        return orjson.loads(self.result)


_INTS = ("amount", "points", "used", "refunded_amount", "refunded_points", "returned_used")


def decode_record(value: str | None) -> EventRecord | None:
    """An event record read back (None if there is none); a record the core cannot read
    raises core_ext.CorruptStateError."""
    fields = core_ext.record_fields(value)
    if not fields:
        return None
    if fields.get("kind") == "json":
        data = orjson.loads(fields["json"])
        fields = {"applied_at_ms": fields["applied_at_ms"], **{
            k: v if isinstance(v, str) else orjson.dumps(v).decode() if isinstance(v, (dict, list)) else str(v)
            for k, v in data.items()}}
    applied = fields.get("applied_at_ms", "")
    return EventRecord(kind=fields.get("kind", ""), applied_at_ms=int(applied) if applied.isdigit() else None,
                       **{k: int(fields[k]) for k in _INTS if k in fields},
                       result=fields.get("result", "{}"), rows=fields.get("rows", ""), fields=fields)


def encode_json_record(move: EventMove, applied_ms: int | None = None) -> str:
    """The record of an HTTP operation: what a retry answers and a reversal needs (applied
    at `applied_ms`, or stamped with Redis' clock when None)."""
    data: dict[str, Any] = {
        "kind": move.kind, "amount": move.amount_fen,
        "points": move.points if move.record_points is None else move.record_points,
        "result": move.result, "used": move.used, "refunded_amount": 0, "refunded_points": 0, "returned_used": 0,
    }
    if move.kind == "redeem":
        data["rows"] = move.rows  # a reversal gives back the very lots these rows took
    return f"J|{'~' if applied_ms is None else applied_ms}|" + orjson.dumps(data).decode()


def join_rows(a: str, b: str) -> str:
    """Two JSON arrays of rows as one ("" counts as empty)."""
    inner = [x.strip()[1:-1].strip() for x in (a, b) if x.strip() not in ("", "[]")]
    return "[" + ",".join(inner) + "]"


def op_record_rows(member_id: str, records: Sequence[str], now_ms: int) -> str:
    """`op_records` rows (a JSON array, "" for none) of the (event id, record) pairs a
    write stores: their durable copy, restored by `loyalty rebuild`."""
    if not records:
        return ""
    mid = orjson.dumps(member_id).decode()
    rows = [f'{{"table":"op_records","member_id":{mid},"event_id":{orjson.dumps(records[i]).decode()},'
            f'"record":{orjson.dumps(records[i + 1]).decode()},"processed_at_ms":{now_ms}}}'
            for i in range(0, len(records), 2)]
    return "[" + ",".join(rows) + "]"


def refunded_record(original: str, move: EventMove) -> str | None:
    """An HTTP record refunded by `move` (a stored-value refund), counted again."""
    if not original.startswith("J|"):
        return None
    _, applied, rest = original.split("|", 2)
    data = orjson.loads(rest)
    data["refunded_amount"] = int(data.get("refunded_amount", 0)) + move.amount_fen
    data["refunded_points"] = int(data.get("refunded_points", 0)) + move.clawback_points
    data["returned_used"] = int(data.get("returned_used", 0)) + move.returned
    return f"J|{applied}|" + orjson.dumps(data).decode()


def guest_payment(event_id: str, fact: str) -> dict[str, Any]:
    """The payment body of a kept guest fact (`[type, occurred_at_ms, amount_fen, bu_id,
    merchant_id, category, channel, refund_of?]`, the core's guest_compact)."""
    kind, at_ms, amount, bu, merchant, category, channel, *rest = orjson.loads(fact)
    at = dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).isoformat(timespec="milliseconds")
    body = {"event_id": event_id, "type": kind, "occurred_at": at, "amount_fen": amount, "bu_id": bu,
            "merchant_id": merchant, "category": category, "channel": channel}
    if rest:
        body["refund_of"] = rest[0]
    return body


#: What the member API's history leaves out of a row (the core's HISTORY_DROPS, batch.rs).
HISTORY_DROPS = ("settlement", "boards", "batch_index", "member_id", "processed_at_ms", "channel", "format", "tier",
                 "category")


def first_row(rows_json: str) -> str | None:
    """The member API's entry for an operation: its rows without HISTORY_DROPS (and an
    empty refund_of), as a JSON array; the accrual builds the same in the core."""
    try:
        rows = orjson.loads(rows_json)
    except orjson.JSONDecodeError:
        return None
    kept = [{k: v for k, v in r.items() if k not in HISTORY_DROPS and not (k == "refund_of" and v == "")}
            for r in rows if isinstance(r, dict)]
    return orjson.dumps(kept).decode() if kept else None


def state_row(member_id: str, seq: int, state_json: str, now_ms: int | None = None) -> str:
    """A `member_states` row (a JSON array of one): the member's whole state after the write
    that gave it `seq`, the durable copy `loyalty rebuild` restores (sql/013_member_states.sql)."""
    at = int(time.time() * 1000) if now_ms is None else now_ms
    return ('[{"table":"member_states","member_id":' + orjson.dumps(member_id).decode() + ',"seq":' + str(seq)
            + ',"processed_at_ms":' + str(at) + ',"state":' + (state_json or "{}") + "}]")
