-- Receipt numbers claimed within their claim's life (the receipts' maximum age + 30 days):
-- the member who submitted each first (its `submitted` step), for `loyalty rebuild`.
SELECT receipt_id, argMin(member_id, occurred_at) AS member_id,
       toUnixTimestamp64Milli(min(submitted_at)) AS submitted_at_ms
FROM receipts FINAL
WHERE status = 'submitted' AND submitted_at >= now64(3) - toIntervalDay({days:UInt32})
GROUP BY receipt_id
