"""An event record read back by the HTTP paths: the core reads the accrual layouts
(record.rs spells them once), Python its own JSON records of HTTP operations."""

from __future__ import annotations

import pytest

import core_ext
from streams.state import EventMove, decode_record, encode_json_record


def test_a_payment_record_is_read_by_the_core_with_its_escapes_and_outbox_token_undone() -> None:
    fields = ["00000000000000ab", "10000", "100", "5", "0", "0", "0", "mall%7C1", "shop-1", "fashion", "mall",
              "300", "9700", "0", "100"]
    got = decode_record("P|1700000000000|" + "|".join(fields) + "|@tok1")
    assert got == {"applied_at_ms": "1700000000000", "kind": "payment", "digest": "00000000000000ab",
                   "amount": "10000", "points": "100", "used": "5", "refunded_amount": "0", "refunded_points": "0",
                   "returned_used": "0", "bu_id": "mall|1", "merchant_id": "shop-1", "category": "fashion",
                   "format": "mall"}
    assert decode_record("M|~|0000000000000001|20") == {"applied_at_ms": "", "kind": "member",
                                                      "digest": "0000000000000001", "points": "20"}
    assert decode_record(None) == {} and decode_record("") == {}


def test_an_operation_record_is_its_json_with_strings_for_values() -> None:
    move = EventMove("r1", "redeem", -50, '[{"kind":"redeem"}]', 500, None, 0, '{"points":50}', used=0)
    got = decode_record(encode_json_record(move).replace("~", "1700000000001", 1))
    assert got["applied_at_ms"] == "1700000000001" and got["kind"] == "redeem"
    assert (got["points"], got["amount"], got["rows"]) == ("-50", "500", '[{"kind":"redeem"}]')


def test_a_record_the_core_cannot_read_is_a_corrupt_state() -> None:
    with pytest.raises(core_ext.CorruptStateError, match="unreadable event record"):
        decode_record("P|12|not-hex|1")
