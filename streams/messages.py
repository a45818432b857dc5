"""Messages the engine writes to its topics from Python: the dead-letter record (why, where,
when, the body as received, and its event id when one can be read) and the ledger messages
that carry a batch's rows and guest facts."""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Sequence

import orjson

from streams.inputs import is_valid_id

EVENT_ID_TEXT = re.compile(rb'"event_id"\s*:\s*"([A-Za-z0-9_.:@-]{1,64})"')


def readable_event_id(body: bytes) -> str | None:
    """The event id of a refused body, whenever one can be read: a JSON object whose
    `event_id` is a valid id (the rest of the body may be what was wrong)."""
    if not body.lstrip()[:1] == b"{":
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        # A cut or broken body (the first bytes of one over the size limit): its event id
        # as written near its start, if it is there plainly.
        found = EVENT_ID_TEXT.search(body[:4096])
        return found.group(1).decode() if found else None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) and is_valid_id(event_id) else None


def dead_letter_record(
    *,
    source: str,
    reason: str,
    body: bytes,
    field: str | None = None,
    event_id: str | None = None,
) -> bytes:
    """The dead-letter envelope: why, where, when, and the body exactly as received."""
    record: dict[str, object] = {
        "source": source,
        "reason": reason,
        "field": field,
        "event_id": event_id,
        "dead_lettered_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(body).decode("ascii")
    return orjson.dumps(record)


#: A ledger message stays well under Kafka's default 1 MB request limit.
LEDGER_MESSAGE_BYTES = 700_000


def ledger_messages(ledger_rows: Sequence[str], guest_facts: Sequence[str]) -> list[bytes]:
    """The batch's ledger rows (each event's JSON array) and guest facts as one or more
    ledger-topic messages of at most about LEDGER_MESSAGE_BYTES each; an event's rows
    stay together."""
    messages: list[bytes] = []
    rows: list[str] = []
    guests: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal rows, guests, size
        if rows or guests:
            messages.append(('{"ledger":[' + ",".join(r[1:-1] for r in rows if len(r) > 2) + '],"guests":['
                             + ",".join(guests) + "]}").encode())
        rows, guests, size = [], [], 0

    for kind, items in (("rows", ledger_rows), ("guests", guest_facts)):
        for item in items:
            if size + len(item) > LEDGER_MESSAGE_BYTES and size:
                flush()
            (rows if kind == "rows" else guests).append(item)
            size += len(item) + 1
    flush()
    return messages
