-- Members who paid in [start, end), those who paid at least twice, and the rate (bp).
SELECT count() AS buyers, countIf(n >= 2) AS repeat_buyers,
       if(count() = 0, 0, intDiv(countIf(n >= 2) * 10000, count())) AS repurchase_bp
FROM (SELECT member_id, count() AS n FROM ledger FINAL
      WHERE kind = 'earn' AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
        AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})
      GROUP BY member_id)
