-- One page of the members a rebuild restores (the ledger's and those with a stored state), in order.
SELECT member_id
FROM (SELECT member_id FROM ledger FINAL UNION ALL SELECT member_id FROM member_states)
GROUP BY member_id
ORDER BY member_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
