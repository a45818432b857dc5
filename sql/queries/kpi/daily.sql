-- Day by day (local days) in [start, end): sales (members and guests, less refunds),
-- members who paid, points issued and points spent.
WITH
    m AS (SELECT toDate(addSeconds(occurred_at, {offset_s:Int32})) AS day,
                 sumIf(amount_fen, kind = 'earn') - sumIf(amount_fen, kind = 'clawback') AS member_sales,
                 uniqExactIf(member_id, kind = 'earn') AS buyers,
                 sumIf(points, points > 0 AND kind NOT IN ('return', 'reverse')) AS issued,
                 -sumIf(points, kind = 'redeem') AS spent
          FROM ledger FINAL
          WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
            AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})
          GROUP BY day),
    g AS (SELECT toDate(addSeconds(occurred_at, {offset_s:Int32})) AS day,
                 sumIf(amount_fen, type = 'payment') - sumIf(amount_fen, type = 'refund') AS guest_sales
          FROM guest_payments FINAL
          WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
            AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})
          GROUP BY day)
SELECT toString(if(m.day = toDate(0), g.day, m.day)) AS day,
       m.member_sales + g.guest_sales AS sales_fen, m.buyers AS active_members,
       m.issued AS points_issued, m.spent AS points_spent
FROM m FULL OUTER JOIN g ON m.day = g.day
ORDER BY day
SETTINGS join_use_nulls = 0
