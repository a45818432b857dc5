-- Guest payments still waiting for their payer to register: within the credit window, not
-- credited to a member (the ledger has no row of them) and their payer bound to no member.
SELECT g.event_id AS event_id, g.type AS type, g.payer_kind AS payer_kind, g.payer_id AS payer_id,
       g.amount_fen AS amount_fen, g.bu_id AS bu_id, g.merchant_id AS merchant_id, g.category AS category,
       g.channel AS channel, toUnixTimestamp64Milli(g.occurred_at) AS occurred_ms, g.refund_of AS refund_of,
       toUnixTimestamp64Milli(g.processed_at) AS processed_ms
FROM guest_payments AS g FINAL
WHERE g.processed_at >= now64(3) - toIntervalDay({days:UInt32})
  AND g.event_id NOT IN (SELECT event_id FROM ledger)
  AND concat('id:', g.payer_kind, ':', g.payer_id) NOT IN (SELECT key FROM bindings WHERE member_id != '')
ORDER BY g.payer_kind, g.payer_id, g.occurred_at
