-- Campaigns in [start, end): members who took part, payments, points given, the sales of
-- those payments, and ROI = sales per fen of points cost (points valued at
-- {point_value_fen_per_100} fen per 100 points), in basis points.
SELECT id AS campaign, uniqExact(member_id) AS members, count() AS payments, sum(pts) AS points,
       sum(amount_fen) AS sales_fen, intDiv(sum(pts) * {point_value_fen_per_100:UInt32}, 100) AS cost_fen,
       if(cost_fen = 0, 0, intDiv(sales_fen * 10000, cost_fen)) AS roi_bp
FROM (SELECT member_id, amount_fen, JSONExtractString(part, 'id') AS id, JSONExtractInt(part, 'points') AS pts
      FROM ledger FINAL ARRAY JOIN JSONExtractArrayRaw(explain) AS part
      WHERE kind = 'earn' AND JSONExtractString(part, 'rule') = 'campaign'
        AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
        AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String}))
GROUP BY id
ORDER BY id
