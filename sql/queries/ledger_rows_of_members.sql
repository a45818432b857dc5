-- Every ledger row of some members, in the order they were applied.
SELECT event_id, member_id, kind, points, amount_fen, bu_id, format, merchant_id, category, channel,
       toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms, refund_of, tier, rules_version,
       toUnixTimestamp64Milli(processed_at) AS processed_at_ms, batch_index, explain, lots
FROM ledger FINAL
WHERE member_id IN {members:Array(String)}
ORDER BY member_id, processed_at, batch_index, kind
