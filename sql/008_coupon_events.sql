-- Every coupon event: issued, redeemed, refused, returned, expired (from the core, with
-- the event that caused it) and pushed / push_failed (from the notifier). For the BI
-- issue's coupon claim and redemption rates and campaign ROI. ReplacingMergeTree on
-- (coupon, kind, event): a replayed event or a re-sent push row collapses.
CREATE TABLE IF NOT EXISTS coupon_events
(
    event_id            String,
    member_id           String,
    kind                LowCardinality(String),
    coupon_id           String,
    template            LowCardinality(String),
    trigger             LowCardinality(String),
    coupon_kind         LowCardinality(String),
    face_value_fen      Int64,
    discount_fen        Int64,
    merchant_share_fen  Int64,
    issuer_share_fen    Int64,
    valid_until         DateTime64(3, 'UTC'),
    occurred_at         DateTime64(3, 'UTC'),
    processed_at        DateTime64(3, 'UTC'),
    rules_version       String,
    reason              String,
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (coupon_id, kind, event_id)
