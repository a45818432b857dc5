-- The latest RFM scores, segment and computed tags of each member (loyalty segments
-- refresh). ReplacingMergeTree on the member, newest refresh wins.
CREATE TABLE IF NOT EXISTS member_segments
(
    member_id      String,
    recency_days   Int64,
    frequency      Int64,
    monetary_fen   Int64,
    r              UInt8,
    f              UInt8,
    m              UInt8,
    segment        LowCardinality(String),
    tags           Array(String),
    refreshed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(refreshed_at)
ORDER BY member_id
