-- The receipts whose latest step is {status} (the reviewers' queue: pending), oldest first.
SELECT receipt_id, member, merchant AS merchant_id, bu AS bu_id, amount AS amount_fen, number AS receipt_no,
       img AS image, toUnixTimestamp64Milli(purchased) AS purchased_at_ms,
       toUnixTimestamp64Milli(submitted) AS submitted_at_ms, state AS status, why AS reason, who AS reviewer,
       if(state = 'pending', NULL, toUnixTimestamp64Milli(last_at)) AS decided_at_ms
FROM (
    SELECT receipt_id,
           any(member_id) AS member, any(merchant_id) AS merchant, any(bu_id) AS bu, any(amount_fen) AS amount,
           any(receipt_no) AS number, any(image) AS img, any(purchased_at) AS purchased,
           min(submitted_at) AS submitted,
           if(countIf(status != 'submitted') = 0, 'pending', argMaxIf(status, occurred_at, status != 'submitted'))
               AS state,
           argMax(reason, occurred_at) AS why, argMax(reviewer, occurred_at) AS who, max(occurred_at) AS last_at
    FROM receipts FINAL
    GROUP BY receipt_id
)
WHERE state = {status:String}
ORDER BY submitted, receipt_id
LIMIT {limit:UInt32}
