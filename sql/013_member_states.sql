-- The durable copy of what Redis keeps for a member beyond the ledger's movements
-- (coupons, profile, tags, holds, overrides, engagement, stored value, exchanges...):
-- every member write sends the member's whole state, with its sequence number, in the
-- same ledger-topic message as the write's rows. One row per member remains after
-- merges (the highest seq); `loyalty rebuild` reads the newest with argMax.
CREATE TABLE IF NOT EXISTS member_states
(
    member_id     String,
    seq           Int64,
    state         String CODEC(ZSTD(3)),
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY member_id;

-- Who each external id (`id:<kind>:<id>`), plate (`plate:<plate>`) and phone that earned a
-- referral (`ref-phone:<phone>`) is bound to: a row per binding or unbinding (member_id
-- empty), the newest per key kept. Also what Redis keeps for a while outside the members:
-- open parking sessions (`park:<car park>:<plate>`, kind parking, value the session JSON,
-- "" once the car left) and gateway payment routes (`gwpay:<event>`, kind route), deleted
-- here after as long as Redis keeps them.
CREATE TABLE IF NOT EXISTS bindings
(
    key           String,
    kind          LowCardinality(String),
    member_id     String,
    value         String,
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(processed_at)
ORDER BY key
TTL toDateTime(processed_at) + INTERVAL 400 DAY DELETE WHERE kind IN ('route', 'parking');

-- The records of the HTTP operations (redemptions, stored value, games, sign-ins,
-- exchanges...): what a retry of the same Idempotency-Key answers and what a reversal or
-- refund needs, the newest version per event (a refund updates its payment's record).
-- `loyalty rebuild` writes them back, so a retry after a rebuild is answered, not applied
-- again.
CREATE TABLE IF NOT EXISTS op_records
(
    member_id     String,
    event_id      String,
    record        String CODEC(ZSTD(3)),
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(processed_at)
ORDER BY (member_id, event_id);

-- Refunds held until their payment is applied (a refund that reached the engine first):
-- a row when held, another when released (its payment came) or expired (dead-lettered).
-- `loyalty rebuild` holds again those whose newest row says held.
CREATE TABLE IF NOT EXISTS held_refunds
(
    member_id     String,
    payment_id    String,
    event_id      String,
    status        LowCardinality(String),
    body          String CODEC(ZSTD(3)),
    deadline_ms   Int64,
    processed_at  DateTime64(3, 'UTC'),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(processed_at)
ORDER BY (member_id, payment_id, event_id, status);
