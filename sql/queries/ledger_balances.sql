-- Points per member as the ledger has them (for reconciliation against Redis).
SELECT member_id, sum(points) AS points
FROM ledger FINAL
GROUP BY member_id
