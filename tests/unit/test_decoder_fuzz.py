"""Property-based fuzzing of every event decoder: random and adversarial bodies (wrong
types, missing fields, huge and negative numbers, int64 overflow, deep nesting, invalid
UTF-8, duplicate keys) are refused with the decoder's typed error, never a panic, a crash
or another exception."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core_ext
from streams.app import load_rules
from streams.auth import mask_phone_bytes, pseudonymise_body
from streams.inputs import parking_event
from streams.settings import ROOT

RULES = load_rules(ROOT / "rules" / "demo.toml")
VALID = {"event_id": "fz-1", "type": "payment", "occurred_at": "2026-11-23T10:15:00+08:00", "member_id": "m-1",
         "bu_id": "sh-mall", "merchant_id": "shop-1", "category": "fashion", "amount_fen": 1000, "channel": "wechat"}
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80), st.binary(max_size=40).map(repr),
    st.just(2**63), st.just(-(2**63) - 1), st.just(-1), st.just(""), st.just("\u0000"), st.just("x" * 10_000),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def mutated() -> st.SearchStrategy[bytes]:
    """A valid payment with fields dropped, retyped or added."""
    def build(drop: list[str], changes: dict[str, Any], extra: dict[str, Any]) -> bytes:
        doc = {k: v for k, v in VALID.items() if k not in drop}
        doc.update(changes)
        doc.update(extra)
        return json.dumps(doc).encode()  # the standard library writes ints past 64 bits and NaN too

    return st.builds(build, st.lists(st.sampled_from(sorted(VALID)), max_size=3),
                     st.dictionaries(st.sampled_from([*sorted(VALID), "refund_of", "payer", "coupon_ids",
                                                       "external_ids", "points_used"]),
                                     ODD, max_size=3),
                     st.dictionaries(st.text(max_size=8), ODD, max_size=2))


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


ADVERSARIAL = st.one_of(
    st.binary(max_size=300),
    mutated(),
    st.integers(1, 5_000).map(nested),
    st.integers(1, 5_000).map(lambda d: b"[" * d + b"]" * d),
    st.just(b'{"event_id":"a","event_id":"b","type":"payment"}'),
    st.just(orjson.dumps(VALID)[:-1] + b',"amount_fen":-5}'),  # a duplicate key that changes the amount
    st.just(orjson.dumps(VALID).replace(b'"m-1"', b'"m-\xff\xfe"')),  # invalid UTF-8 inside a string
    st.just(json.dumps({**VALID, "amount_fen": 2**64}).encode()),
    st.just(orjson.dumps(VALID).replace(b"1000", b"1e400")),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ADVERSARIAL)
def test_core_decoders_refuse_with_typed_errors_only(body: bytes) -> None:
    for decode in (core_ext.validate_payment, core_ext.validate_member_event):
        try:
            decode(body)
        except core_ext.InvalidEventError as exc:
            assert exc.field and str(exc)
    batch = core_ext.EventBatch.decode([body])
    assert len(batch) == 1
    try:
        core_ext.decode_event(body)
    except core_ext.InvalidEventError:  # invalid: the batch evaluation rejects it, it does not crash
        out = core_ext.evaluate_batch(RULES, batch, [False], [None], {}, {}, int(time.time() * 1000)).outcomes
        assert out[0].kind == core_ext.OutcomeKind.REJECTED and out[0].field


@settings(max_examples=300, deadline=None)
@given(ADVERSARIAL)
def test_python_decoders_refuse_without_crashing(body: bytes) -> None:
    ev, field, reason = parking_event(body, {"park"})
    assert (ev is None) == bool(field) and (ev is not None or reason)
    blocks = core_ext.ledger_blocks([body])  # stored, or named as poison with the reason; never a crash
    assert len(blocks.poison) <= 1 and all(reason for _, reason in blocks.poison)
    assert not (blocks.poison and blocks.tables), "a poison message leaves nothing in the blocks"
    out = pseudonymise_body(body, "k" * 16)
    assert isinstance(out, bytes)
    assert isinstance(mask_phone_bytes(body), bytes)


def test_duplicate_keys_and_huge_numbers_are_named() -> None:
    for body, field in ((json.dumps({**VALID, "amount_fen": 2**64}).encode(), "amount_fen"),
                        (orjson.dumps({**VALID, "amount_fen": -5}), "amount_fen"),
                        (orjson.dumps({**VALID, "amount_fen": 10.5}), "amount_fen")):
        try:
            core_ext.validate_payment(body)
        except core_ext.InvalidEventError as exc:
            assert exc.field == field, (body, exc.field)
        else:
            raise AssertionError(f"accepted {body!r}")


def test_amount_reasons_say_out_of_range_or_decimal() -> None:
    """2**70 is an integer too large, not a decimal: the reason says so and gives the maximum."""
    cases = ((2**70, "is out of range: at most 1000000000000 fen"),
             (2**64, "is out of range: at most 1000000000000 fen"),
             (-(2**70), "is out of range: at most 1000000000000 fen"),
             (10.5, "must be an integer number of fen, not a decimal"),
             (10**13, "must be at most 1000000000000 fen, got 10000000000000"))
    for amount, reason in cases:
        body = json.dumps({**VALID, "amount_fen": amount}).encode()
        try:
            core_ext.validate_payment(body)
        except core_ext.InvalidEventError as exc:
            assert (exc.field, exc.reason) == ("amount_fen", reason), (amount, exc.reason)
        else:
            raise AssertionError(f"accepted {amount}")
