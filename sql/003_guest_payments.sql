-- Payments (and refunds) by payers that are not members: kept as facts for BI.
-- ReplacingMergeTree on the event id, like the ledger: a re-sent fact collapses.
CREATE TABLE IF NOT EXISTS guest_payments
(
    event_id      String,
    type          LowCardinality(String),
    payer_kind    LowCardinality(String),
    payer_id      String,
    amount_fen    Int64,
    bu_id         LowCardinality(String),
    format        LowCardinality(String),
    merchant_id   String,
    category      LowCardinality(String),
    channel       LowCardinality(String),
    occurred_at   DateTime64(3, 'UTC'),
    refund_of     String,
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (payer_kind, payer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
