-- Stored value per member from its ledger (fen), for reconciliation with Redis.
SELECT member_id, sum(amount_fen) AS amount_fen
FROM stored_value FINAL
GROUP BY member_id
