-- Growth and churn: buyers of the previous period of the same length who did not buy in
-- [start, end) are churned; the rate is over the previous period's buyers (bp).
WITH
    dateDiff('millisecond', {start:DateTime64(3, 'UTC')}, {end:DateTime64(3, 'UTC')}) AS len_ms,
    prev AS (SELECT DISTINCT member_id FROM ledger FINAL
             WHERE kind = 'earn' AND occurred_at >= subtractMilliseconds({start:DateTime64(3, 'UTC')}, len_ms)
               AND occurred_at < {start:DateTime64(3, 'UTC')}
               AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})),
    cur AS (SELECT DISTINCT member_id FROM ledger FINAL
            WHERE kind = 'earn' AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
              AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String}))
SELECT
    (SELECT count() FROM prev)                                                   AS previous_buyers,
    (SELECT count() FROM cur)                                                    AS buyers,
    (SELECT count() FROM prev WHERE member_id NOT IN (SELECT member_id FROM cur)) AS churned,
    (SELECT count() FROM cur WHERE member_id NOT IN (SELECT member_id FROM prev)) AS gained,
    if(previous_buyers = 0, 0, intDiv(churned * 10000, previous_buyers))         AS churn_bp
