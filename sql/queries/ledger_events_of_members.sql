-- The event ids of some members' ledger rows (what Redis should hold a record of).
SELECT DISTINCT member_id, event_id
FROM ledger FINAL
WHERE member_id IN {members:Array(String)}
