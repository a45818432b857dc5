-- Receipt points (小票积分, issue 24; docs/points-mall.md): one row per step of a receipt a
-- member submitted (submitted, approved — by the rules or a reviewer — or rejected with the
-- reason), with the merchant, amount, receipt number, purchase time and the uploaded
-- image's name. The points an approved receipt earns are in the ledger (channel
-- `receipt`, event id = receipt_id). ReplacingMergeTree: a step sent again collapses.
CREATE TABLE IF NOT EXISTS receipts
(
    receipt_id    String,
    status        LowCardinality(String),
    event_id      String,
    member_id     String,
    merchant_id   LowCardinality(String),
    bu_id         LowCardinality(String),
    amount_fen    Int64,
    receipt_no    String,
    purchased_at  DateTime64(3, 'UTC'),
    image         String,
    reason        String,
    reviewer      String,
    submitted_at  DateTime64(3, 'UTC'),
    occurred_at   DateTime64(3, 'UTC'),
    processed_at  DateTime64(3, 'UTC'),
    rules_version String,
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(submitted_at)
ORDER BY (receipt_id, status);
