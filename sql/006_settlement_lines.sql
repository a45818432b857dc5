-- Double-entry settlement lines: every event's lines sum to zero in fen and in points.
-- Accounts: gateway, merchant:<id>, bu:<id>, pool, members.
CREATE TABLE IF NOT EXISTS settlement_lines
(
    event_id      String,
    kind          LowCardinality(String),
    line_no       UInt16,
    member_id     String,
    account       LowCardinality(String),
    amount_fen    Int64,
    points        Int64,
    bu_id         LowCardinality(String),
    merchant_id   String,
    occurred_at   DateTime64(3, 'UTC'),
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id, kind, line_no)
SETTINGS non_replicated_deduplication_window = 1000;
