-- Registered members by their last payment before {end} (in the BU / format filter):
-- active within {active_days}, normal within {dormant_days}, dormant beyond (or never paid).
WITH
    registered AS (SELECT member_id FROM ledger FINAL WHERE kind = 'register' AND occurred_at < {end:DateTime64(3, 'UTC')}
                   GROUP BY member_id),
    last_paid AS (SELECT member_id, max(occurred_at) AS last FROM ledger FINAL
                  WHERE kind = 'earn' AND occurred_at < {end:DateTime64(3, 'UTC')}
                    AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})
                  GROUP BY member_id),
    days AS (SELECT r.member_id AS member_id,
                    if(l.member_id = '', 4000000000, dateDiff('second', l.last, {end:DateTime64(3, 'UTC')})) AS idle_s
             FROM registered AS r LEFT JOIN last_paid AS l ON r.member_id = l.member_id)
SELECT
    countIf(idle_s <= {active_days:UInt32} * 86400)                                           AS active,
    countIf(idle_s > {active_days:UInt32} * 86400 AND idle_s <= {dormant_days:UInt32} * 86400) AS normal,
    countIf(idle_s > {dormant_days:UInt32} * 86400)                                           AS dormant
FROM days
SETTINGS join_use_nulls = 0
