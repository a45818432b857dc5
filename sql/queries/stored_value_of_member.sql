-- A member's stored-value ledger, oldest first.
SELECT event_id, kind, amount_fen, balance_after_fen, bu_id, merchant_id, category, channel, refund_of,
       occurred_at
FROM stored_value FINAL
WHERE member_id = {member_id:String}
ORDER BY processed_at, event_id
