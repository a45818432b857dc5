-- The operators' audit trail (docs/back-office.md): one row per change made through the
-- console or the admin API: who (operator, role, scope), when, what (action, member,
-- target), the answer's status, and the state before and after (JSON). Append-only: the
-- engine never updates or deletes a row; a retried send of the same request collapses on
-- its request id.
CREATE TABLE IF NOT EXISTS audit_log
(
    request_id    String,
    at            DateTime64(3, 'UTC'),
    operator      String,
    role          LowCardinality(String),
    scope         String,
    action        LowCardinality(String),
    member_id     String,
    target        String,
    status        Int64,
    before        String CODEC(ZSTD(3)),
    after         String CODEC(ZSTD(3)),
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY request_id;
