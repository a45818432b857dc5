-- Tier movements in [start, end): from -> to, how many.
SELECT splitByString('->', JSONExtractString(arrayJoin(JSONExtractArrayRaw(explain)), 'id'))[1] AS from_tier,
       tier AS to_tier, count() AS movements
FROM ledger FINAL
WHERE kind = 'tier_change' AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
GROUP BY from_tier, to_tier
ORDER BY from_tier, to_tier
