-- The points ledger: one row per balance movement, keyed by the event that caused it.
-- ReplacingMergeTree on (member_id, event_id, kind): a row re-emitted after a crash
-- or a replay collapses into one; queries that sum read it with FINAL.
-- A replayed row is byte-identical (the worker keeps the canonical row in Redis),
-- and occurred_at never changes for an event, so both copies land in one partition.
CREATE TABLE IF NOT EXISTS ledger
(
    event_id      String,
    member_id     String,
    kind          LowCardinality(String),
    points        Int64,
    amount_fen    Int64,
    bu_id         LowCardinality(String),
    format        LowCardinality(String),
    merchant_id   String,
    category      LowCardinality(String),
    channel       LowCardinality(String),
    occurred_at   DateTime64(3, 'UTC'),
    refund_of     String,
    tier          LowCardinality(String),
    rules_version LowCardinality(String),
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (member_id, event_id, kind)
SETTINGS non_replicated_deduplication_window = 1000;
