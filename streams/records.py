"""Event helpers on the Python side: identifiers and dead-letter envelopes.

Validation of payment bodies lives in the Rust core (`core_ext.validate_payment`),
so the ingress and the agents apply one and the same rule.
"""

from __future__ import annotations

import base64
import datetime as dt
import re

import orjson

# The same alphabet as the core's check_id: ids end up inside Redis keys.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


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
