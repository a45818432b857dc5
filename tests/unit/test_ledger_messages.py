"""A batch's ledger rows are split into ledger-topic messages under Kafka's request limit,
with every row kept, in order, and each event's rows together."""

from __future__ import annotations

import orjson

from streams.messages import LEDGER_MESSAGE_BYTES, ledger_messages


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
