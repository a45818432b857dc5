"""Checks of input on the Python side: the error every refused field raises (BadInput, a
400 naming the field), integers, instants and dates within their bounds, ids, JSON objects
and parking events. Payment bodies are checked in the Rust core
(`core_ext.validate_payment`), so the ingress and the agents apply one and the same rule.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import orjson

import core_ext
from streams.errors import InputError

# The same alphabet as the core's check_id: ids end up inside Redis keys.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


class BadInput(InputError):
    """An input that fails an explicit check. Input is never validated with `assert`
    (`python -O` strips it): `require` raises this instead. `.field` names the input."""

    def __init__(self, what: str, field: str = "body") -> None:
        super().__init__(what)
        self.field = field


def require(condition: object, what: str = "invalid input", field: str = "body") -> None:
    if not condition:
        raise BadInput(what, field)


def int_in(value: object, field: str, lo: int, hi: int) -> int:
    """An integer of a request within [lo, hi] (not a bool, not a float), or BadInput
    naming the field and the limits."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadInput(f"{field}: must be an integer from {lo} to {hi}", field)
    return value


#: Times and dates from a request are refused outside these years (ClickHouse's DateTime64
#: and the engine's own events stay within them).
YEARS = (1970, 2199)


def instant_in(raw: str, field: str) -> dt.datetime:
    """An ISO-8601 instant from a request (UTC when it names no offset) between 1970 and
    2199, or BadInput naming the field."""
    try:
        at = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(f"{field}: {raw[:40]!r} is not an ISO-8601 time", field) from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    if not YEARS[0] <= at.year <= YEARS[1] - 1:
        raise BadInput(f"{field}: must be between {YEARS[0]} and {YEARS[1]}", field)
    return at.astimezone(dt.UTC)


def date_in(raw: str, field: str) -> dt.date:
    """A YYYY-MM-DD date from a request between 1970 and 2199, or BadInput naming the field."""
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise BadInput(f"{field}: {raw[:40]!r} is not a date YYYY-MM-DD", field) from None
    if not YEARS[0] <= day.year <= YEARS[1] - 1:
        raise BadInput(f"{field}: must be between {YEARS[0]} and {YEARS[1]}", field)
    return day


def json_object(body: bytes) -> dict[str, Any]:
    """A request body as one JSON object, read strictly (the core refuses a key repeated
    at any depth); BadInput naming what is wrong."""
    try:
        core_ext.check_json_object(body)
    except core_ext.InvalidEventError as exc:
        raise BadInput(str(exc), "body") from None
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise BadInput("body: must be a JSON object")
    return value


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


PLATE = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff]{2,16}$")


def parking_event(body: bytes, car_parks: set[str]) -> tuple[dict[str, Any] | None, str, str]:
    """A validated parking event, or (None, field, reason)."""
    try:
        ev = orjson.loads(body)
        require(isinstance(ev, dict))
    except (orjson.JSONDecodeError, BadInput):
        return None, "body", "must be a JSON object"
    for f in ("event_id", "gate"):
        if not isinstance(ev.get(f), str) or not is_valid_id(ev[f]):
            return None, f, "required: letters, digits, _ - . : @"
    if ev.get("type") not in ("entry", "exit"):
        return None, "type", 'must be "entry" or "exit"'
    if not isinstance(ev.get("plate"), str) or not PLATE.fullmatch(ev["plate"]):
        return None, "plate", "required: 2-16 letters, digits or Chinese characters"
    if ev.get("car_park") not in car_parks:
        return None, "car_park", f"must be one of {sorted(car_parks)}"
    try:
        at = dt.datetime.fromisoformat(ev["occurred_at"])
        require(at.tzinfo is not None)
    except (KeyError, TypeError, ValueError, BadInput):
        return None, "occurred_at", "must be an ISO-8601 time with offset"
    return ev, "", ""
