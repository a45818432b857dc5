-- One row per car park exit (or anomaly): the fee and each deduction, points used,
-- what was due. ReplacingMergeTree on the exit event: a replayed exit collapses.
CREATE TABLE IF NOT EXISTS parking_sessions
(
    event_id          String,
    status            LowCardinality(String),
    plate             String,
    car_park          LowCardinality(String),
    member_id         String,
    entry_at          DateTime64(3, 'UTC'),
    exit_at           DateTime64(3, 'UTC'),
    minutes           Int64,
    gross_fee_fen     Int64,
    fee_fen           Int64,
    points_used       Int64,
    points_value_fen  Int64,
    due_fen           Int64,
    deductions        String,
    inserted_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(exit_at)
ORDER BY (car_park, event_id)
