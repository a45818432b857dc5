-- RFM and rule-based tags over the {window_days} days before {end}, for members who paid
-- in them. Scores 1-5 by quintile (ntile; 5 = most recent / most frequent / most spent,
-- ties broken by member id). Segments: champions (R, F, M >= 4), loyal (F >= 4), promising
-- (R >= 4, F <= 2), at_risk (R <= 2, F >= 3), hibernating (R <= 2), else regular. Tags:
-- foodie (>= {foodie_pct}% of gross spend in {food_categories}), sports_lover
-- (>= {sports_pct}% in {sports_categories}), parker (>= {parker_visits} car park exits or
-- parking payments).
WITH
    features AS (
        SELECT member_id,
               dateDiff('day', maxIf(occurred_at, kind = 'earn'), {end:DateTime64(3, 'UTC')}) AS recency_days,
               countIf(kind = 'earn') AS frequency,
               sumIf(amount_fen, kind = 'earn') - sumIf(amount_fen, kind = 'clawback') AS monetary_fen,
               sumIf(amount_fen, kind = 'earn') AS gross_fen,
               sumIf(amount_fen, kind = 'earn' AND has({food_categories:Array(String)}, toString(category))) AS food_fen,
               sumIf(amount_fen, kind = 'earn' AND has({sports_categories:Array(String)}, toString(category))) AS sports_fen,
               countIf(kind = 'earn' AND format = 'parking') AS parking_payments
        FROM ledger FINAL
        WHERE kind IN ('earn', 'clawback')
          AND occurred_at >= subtractDays({end:DateTime64(3, 'UTC')}, {window_days:UInt32})
          AND occurred_at < {end:DateTime64(3, 'UTC')}
        GROUP BY member_id
        HAVING frequency > 0),
    parking AS (
        SELECT member_id, count() AS sessions FROM parking_sessions FINAL
        WHERE member_id != '' AND exit_at >= subtractDays({end:DateTime64(3, 'UTC')}, {window_days:UInt32})
          AND exit_at < {end:DateTime64(3, 'UTC')}
        GROUP BY member_id),
    scored AS (
        SELECT f.member_id AS member_id, recency_days, frequency, monetary_fen, gross_fen, food_fen, sports_fen,
               parking_payments + p.sessions AS parking_visits,
               toUInt8(ntile(5) OVER (ORDER BY recency_days DESC, f.member_id)) AS r,
               toUInt8(ntile(5) OVER (ORDER BY frequency, f.member_id)) AS f,
               toUInt8(ntile(5) OVER (ORDER BY monetary_fen, f.member_id)) AS m
        FROM features AS f LEFT JOIN parking AS p ON f.member_id = p.member_id
        SETTINGS join_use_nulls = 0)
SELECT member_id, recency_days, frequency, monetary_fen, r, f, m,
       multiIf(r >= 4 AND f >= 4 AND m >= 4, 'champions', f >= 4, 'loyal', r >= 4 AND f <= 2, 'promising',
               r <= 2 AND f >= 3, 'at_risk', r <= 2, 'hibernating', 'regular') AS segment,
       arrayFilter(t -> t != '', [
           if(gross_fen > 0 AND food_fen * 100 >= gross_fen * {foodie_pct:UInt32}, 'foodie', ''),
           if(gross_fen > 0 AND sports_fen * 100 >= gross_fen * {sports_pct:UInt32}, 'sports_lover', ''),
           if(parking_visits >= {parker_visits:UInt32}, 'parker', '')]) AS tags
FROM scored
ORDER BY member_id
