"""An event record read back by the HTTP paths as one typed EventRecord: the core reads the accrual layouts
(record.rs spells them once), Python its own JSON records of HTTP operations."""

from __future__ import annotations

import pytest

import core_ext
from streams.state import EventMove, EventRecord, decode_record, encode_json_record


def test_a_payment_record_is_read_by_the_core_with_its_escapes_and_outbox_token_undone() -> None:
    fields = ["00000000000000ab", "10000", "100", "5", "0", "0", "0", "mall%7C1", "shop-1", "fashion", "mall",
              "300", "9700", "0", "100"]
    got = decode_record("P|1700000000000|" + "|".join(fields) + "|@tok1")
    assert got == EventRecord(kind="payment", applied_at_ms=1_700_000_000_000, amount=10_000, points=100, used=5)
    assert got is not None and (got.fields["bu_id"], got.fields["merchant_id"], got.fields["format"]) == (
        "mall|1", "shop-1", "mall")
    member = decode_record("M|~|0000000000000001|20")
    assert member == EventRecord(kind="member", applied_at_ms=None, points=20)
    assert decode_record(None) is None and decode_record("") is None


def test_an_operation_record_is_its_json_with_strings_for_values() -> None:
    move = EventMove("r1", "redeem", -50, '[{"kind":"redeem"}]', 500, None, 0, '{"points":50}', used=0)
    got = decode_record(encode_json_record(move).replace("~", "1700000000001", 1))
    assert got is not None and (got.applied_at_ms, got.kind) == (1_700_000_000_001, "redeem")
    assert (got.points, got.amount, got.rows) == (-50, 500, '[{"kind":"redeem"}]')
    assert got.json() == {"points": 50}


def test_a_record_the_core_cannot_read_is_a_corrupt_state() -> None:
    with pytest.raises(core_ext.CorruptStateError, match="unreadable event record"):
        decode_record("P|12|not-hex|1")
