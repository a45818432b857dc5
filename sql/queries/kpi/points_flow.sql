-- Points flow between formats in [start, end): points members earned in each format
-- and spent in each format (where points earned in one are spent in another).
SELECT format, sumIf(points, kind = 'earn' AND points > 0) AS earned, -sumIf(points, kind = 'redeem') AS spent
FROM ledger FINAL
WHERE kind IN ('earn', 'redeem') AND format != ''
  AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
GROUP BY format
ORDER BY format
