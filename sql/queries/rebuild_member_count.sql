-- How many members a rebuild restores: those the ledger knows and those with a stored state.
SELECT uniqExact(member_id) AS members
FROM (SELECT member_id FROM ledger FINAL UNION ALL SELECT member_id FROM member_states)
