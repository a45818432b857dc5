-- Tier distribution at {end}: each member's tier on their latest movement before it
-- (a tier change wins over the payment that caused it, at the same instant).
SELECT current_tier AS tier, count() AS members
FROM (SELECT member_id, argMax(tier, (occurred_at, kind = 'tier_change', processed_at, batch_index)) AS current_tier
      FROM ledger FINAL WHERE occurred_at < {end:DateTime64(3, 'UTC')} AND tier != '' GROUP BY member_id)
GROUP BY current_tier
ORDER BY current_tier
