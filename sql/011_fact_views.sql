-- The two facts that live inside other tables, as views for BI tools: every payment and
-- refund (members' from the ledger, guests' from guest_payments), and every member change
-- (registrations, profile and tag updates, segments, tier changes and overrides).
CREATE VIEW IF NOT EXISTS payments AS
SELECT event_id, if(kind = 'earn', 'payment', 'refund') AS type, member_id, '' AS payer_kind, '' AS payer_id,
       amount_fen, bu_id, format, merchant_id, category, channel, occurred_at, refund_of
FROM ledger FINAL WHERE kind IN ('earn', 'clawback')
UNION ALL
SELECT event_id, toString(type) AS type, '' AS member_id, toString(payer_kind) AS payer_kind, payer_id, amount_fen,
       toString(bu_id), toString(format), merchant_id, toString(category), toString(channel), occurred_at, refund_of
FROM guest_payments FINAL;

CREATE VIEW IF NOT EXISTS member_changes AS
SELECT event_id, member_id, kind, tier, occurred_at, explain
FROM ledger FINAL
WHERE kind IN ('register', 'profile', 'segments', 'tier_change', 'tier_override', 'tier_review');
