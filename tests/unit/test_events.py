"""Validation of payment bodies by the core, as the ingress and the agents see it."""

from __future__ import annotations

import orjson
import pytest

import core_ext
from tests.fixtures import rules_toml

GOOD = {
    "event_id": "tx-1",
    "type": "payment",
    "occurred_at": "2026-11-23T10:15:00+08:00",
    "member_id": "m-1",
    "bu_id": "sh-mall",
    "merchant_id": "shop-7",
    "category": "fashion",
    "amount_fen": 12345,
    "channel": "wechat",
}


def test_valid_payment_gives_its_keys() -> None:
    assert core_ext.validate_payment(orjson.dumps(GOOD)) == ("tx-1", "m-1", "payment", None)


def test_a_payer_may_stand_in_for_the_member() -> None:
    body = {k: v for k, v in GOOD.items() if k != "member_id"} | {"payer": {"kind": "wechat", "id": "o-9"}}
    assert core_ext.validate_payment(orjson.dumps(body)) == ("tx-1", None, "payment", ("wechat", "o-9"))
    for payer, field in [({"kind": "fax", "id": "1"}, "payer.kind"), ({"kind": "phone"}, "payer.id"),
                         ("13800000000", "payer")]:
        with pytest.raises(core_ext.InvalidEventError) as info:
            core_ext.validate_payment(orjson.dumps(body | {"payer": payer}))
        assert info.value.field == field


def test_member_events_validate() -> None:
    reg = {"event_id": "r-1", "type": "register", "occurred_at": "2026-11-23T10:00:00+08:00", "member_id": "m-1",
           "birthday": "1990-11-02", "tags": ["vip"], "external_ids": [{"kind": "phone", "id": "13800000000"}]}
    assert core_ext.validate_member_event(orjson.dumps(reg)) == ("r-1", "m-1", "register")
    for change, field in [({"birthday": "1990-13-02"}, "birthday"), ({"tags": "vip"}, "tags"),
                          ({"type": "referral"}, "referred_member_id"), ({"type": "tier_override"}, "tier")]:
        with pytest.raises(core_ext.InvalidEventError) as info:
            core_ext.validate_member_event(orjson.dumps(reg | change))
        assert info.value.field == field
    with pytest.raises(core_ext.InvalidEventError):
        core_ext.validate_member_event(orjson.dumps(GOOD))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_fen": 12.5}, "amount_fen"),
        ({"amount_fen": -1}, "amount_fen"),
        ({"amount_fen": 0}, "amount_fen"),
        ({"amount_fen": "100"}, "amount_fen"),
        ({"amount_fen": 2**63}, "amount_fen"),
        ({"member_id": None}, "member_id"),
        ({"member_id": "a{b}"}, "member_id"),
        ({"member_id": "x" * 65}, "member_id"),
        ({"type": "chargeback"}, "type"),
        ({"type": "register"}, "type"),
        ({"occurred_at": "2026-11-23 10:15"}, "occurred_at"),
        ({"occurred_at": "2026-11-23T10:15:00"}, "occurred_at"),
        ({"refund_of": "tx-0"}, "refund_of"),
        ({"type": "refund"}, "refund_of"),
        ({"event_id": 7}, "event_id"),
    ],
)
def test_bad_field_is_named(change: dict[str, object], field: str) -> None:
    body = {**GOOD, **change}
    with pytest.raises(core_ext.InvalidEventError) as info:
        core_ext.validate_payment(orjson.dumps(body))
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'"x"'])
def test_not_an_object_is_a_body_error(raw: bytes) -> None:
    with pytest.raises(core_ext.InvalidEventError) as info:
        core_ext.validate_payment(raw)
    assert info.value.field == "body"


def test_the_core_errors_form_one_tree_under_the_engine_root() -> None:
    for exc in (core_ext.InvalidEventError, core_ext.RulesError, core_ext.RejectedEventError,
                core_ext.CorruptStateError, core_ext.InvalidArgumentError):
        assert issubclass(exc, core_ext.LoyaltyCoreError)
        assert exc.__module__ == "core_ext"
    assert issubclass(core_ext.LoyaltyCoreError, core_ext.LoyaltyError)
    assert issubclass(core_ext.LoyaltyCoreError, ValueError), "the core's refusals are ValueErrors too"
    assert not issubclass(core_ext.LoyaltyError, ValueError)


def test_a_corrupt_stored_state_is_a_typed_error_saying_so() -> None:
    rules = core_ext.RuleSet.from_toml(rules_toml('version = "t"', "mall", "normal_tier"), "t.toml")
    with pytest.raises(core_ext.CorruptStateError, match="stored member state is not valid"):
        core_ext.member_view(rules, "{not json", 0)
    with pytest.raises(core_ext.InvalidArgumentError, match="horizon_days"):
        core_ext.AccrualBatch(rules, [], "ly", 0, 0, 8)
