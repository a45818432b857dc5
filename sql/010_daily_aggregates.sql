-- Daily aggregates per business unit, format and merchant, kept up to date by
-- materialized views as rows arrive (for dashboards over long ranges). A materialized
-- view sees each inserted block, so a ledger row re-sent after a crash (which the
-- ReplacingMergeTree collapses) is counted again here: the KPI queries read the base
-- tables with FINAL for exact figures; these are for fast, approximate trends.
CREATE TABLE IF NOT EXISTS daily_sales
(
    day          Date,
    bu_id        LowCardinality(String),
    format       LowCardinality(String),
    merchant_id  String,
    payments     UInt64,
    refunds      UInt64,
    sales_fen    Int64,
    points       Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, bu_id, format, merchant_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_sales_mv TO daily_sales AS
SELECT toDate(occurred_at) AS day, bu_id, format, merchant_id,
       toUInt64(kind = 'earn') AS payments, toUInt64(kind = 'clawback') AS refunds,
       if(kind = 'earn', amount_fen, -amount_fen) AS sales_fen, points
FROM ledger
WHERE kind IN ('earn', 'clawback');

CREATE TABLE IF NOT EXISTS daily_points
(
    day        Date,
    bu_id      LowCardinality(String),
    kind       LowCardinality(String),
    movements  UInt64,
    points     Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, bu_id, kind);

CREATE MATERIALIZED VIEW IF NOT EXISTS daily_points_mv TO daily_points AS
SELECT toDate(occurred_at) AS day, bu_id, kind, toUInt64(1) AS movements, points
FROM ledger;
