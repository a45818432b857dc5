-- One page of the members the ledger knows, in order (for rebuild and reconcile).
SELECT member_id FROM ledger FINAL
GROUP BY member_id
ORDER BY member_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
