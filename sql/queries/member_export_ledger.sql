-- Every ledger row of one member, oldest first (a personal data export).
SELECT event_id, kind, points, amount_fen, bu_id, merchant_id, category, channel,
       toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms, refund_of, tier, rules_version, explain
FROM ledger FINAL
WHERE member_id = {member_id:String}
ORDER BY occurred_at, event_id, kind
