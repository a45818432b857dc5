-- The payments and refunds of members between two instants, oldest first, as the
-- backtest replays them ({start} inclusive, {end} exclusive).
SELECT event_id, member_id, kind, amount_fen, bu_id, merchant_id, category, channel,
       toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms, refund_of
FROM ledger FINAL
WHERE kind IN ('earn', 'clawback')
  AND occurred_at >= {start:DateTime64(3, 'UTC')}
  AND occurred_at < {end:DateTime64(3, 'UTC')}
ORDER BY occurred_at, event_id
