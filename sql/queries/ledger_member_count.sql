-- How many members the ledger knows.
SELECT uniqExact(member_id) AS members FROM ledger FINAL
