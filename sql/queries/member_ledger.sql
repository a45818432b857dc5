-- One member's ledger rows in a time range, newest first, one page at a time.
SELECT event_id, kind, points, amount_fen, bu_id, format, merchant_id, category, channel,
       toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms, refund_of, tier, rules_version, explain, lots
FROM ledger FINAL
WHERE member_id = {member_id:String}
  AND occurred_at >= {start:DateTime64(3, 'UTC')}
  AND occurred_at < {end:DateTime64(3, 'UTC')}
ORDER BY occurred_at DESC, event_id DESC, kind
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
