-- Engagement history (issue 10). game_draws: every play of a game with what an
-- operator needs to audit its outcome: the draw (0-999999, from a CSPRNG), the odds
-- table and prize stock taken as the play saw them, the prize and outcome.
-- stored_value: the prepaid-money ledger (fen), apart from points: top-ups, payments
-- at the till, refunds, with the balance after each. ReplacingMergeTree: a row sent
-- again (a retry, a replay) collapses.
CREATE TABLE IF NOT EXISTS game_draws
(
    event_id        String,
    member_id       String,
    game_id         LowCardinality(String),
    game_kind       LowCardinality(String),
    draw            Int64,
    odds_total      Int64,
    odds            String,
    prize_id        String,
    outcome         LowCardinality(String),
    cost_points     Int64,
    rules_version   String,
    occurred_at     DateTime64(3, 'UTC'),
    processed_at    DateTime64(3, 'UTC'),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (game_id, member_id, event_id);

CREATE TABLE IF NOT EXISTS stored_value
(
    event_id            String,
    member_id           String,
    kind                LowCardinality(String),
    amount_fen          Int64,
    balance_after_fen   Int64,
    bu_id               LowCardinality(String),
    merchant_id         String,
    category            LowCardinality(String),
    channel             LowCardinality(String),
    refund_of           String,
    occurred_at         DateTime64(3, 'UTC'),
    processed_at        DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (member_id, event_id)
