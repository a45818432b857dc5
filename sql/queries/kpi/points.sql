-- Points in [start, end): issued (every positive movement but given-back and reversed
-- points), spent, expired, clawed back; outstanding (the liability) at {end}, group-wide.
SELECT
    sumIf(points, points > 0 AND kind NOT IN ('return', 'reverse') AND in_range AND in_scope) AS issued,
    -sumIf(points, kind = 'redeem' AND in_range AND in_scope)                                AS spent,
    -sumIf(points, kind = 'expire' AND in_range)                                             AS expired,
    -sumIf(points, kind = 'clawback' AND in_range AND in_scope)                              AS clawed_back,
    sumIf(points, occurred_at < {end:DateTime64(3, 'UTC')})                                  AS outstanding
FROM (SELECT *, occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')} AS in_range,
             ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String}) AS in_scope
      FROM ledger FINAL)
