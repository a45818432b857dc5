"""A batch's ledger rows are split into ledger-topic messages under Kafka's request limit,
with every row kept, in order, and each event's rows together."""

from __future__ import annotations

import orjson

import core_ext
from streams.messages import LEDGER_MESSAGE_BYTES, ledger_messages
from streams.state.records import state_row


def test_a_large_batch_is_split_and_nothing_is_lost() -> None:
    events = [orjson.dumps([{"event_id": f"e{i}", "k": "x" * (i % 900)}, {"event_id": f"e{i}", "k": "tier"}]).decode()
              for i in range(5_000)]
    guests = [orjson.dumps({"event_id": f"g{i}"}).decode() for i in range(300)]
    messages = ledger_messages(events, guests)
    assert len(messages) > 1
    assert all(len(m) <= LEDGER_MESSAGE_BYTES + 2_000 for m in messages)
    decoded = [orjson.loads(m) for m in messages]
    rows = [r for d in decoded for r in d["ledger"]]
    assert [r["event_id"] for r in rows] == [f"e{i}" for i in range(5_000) for _ in range(2)]
    assert [g["event_id"] for d in decoded for g in d["guests"]] == [f"g{i}" for i in range(300)]
    assert ledger_messages([], []) == []
    (one,) = ledger_messages(events[:3], [])
    assert len(orjson.loads(one)["ledger"]) == 6


def test_the_ledger_block_is_inserted_after_the_rows_that_go_with_it() -> None:
    """Reconcile and rebuild go by the ledger: once a write's ledger row can be read, its
    state and records must already be in (the sink inserts the blocks in this order)."""
    row = {"event_id": "e1", "member_id": "m1", "kind": "earn", "points": 120, "amount_fen": 12000,
           "bu_id": "mall", "format": "mall", "merchant_id": "s", "category": "c", "channel": "wechat",
           "occurred_at_ms": 1000, "refund_of": "", "tier": "normal", "rules_version": "v",
           "processed_at_ms": 2000, "explain": []}
    rows = [row, *orjson.loads(state_row("m1", 7, '{"lots":[]}', 2000))]
    (message,) = ledger_messages([orjson.dumps(rows).decode()], [])
    blocks = core_ext.ledger_blocks([message])
    assert not blocks.poison
    names = [tb.table for tb in blocks.tables]
    assert set(names) == {"ledger", "member_states"} and names[-1] == "ledger"
