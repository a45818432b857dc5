-- Lifetime value before {end}: net spend (payments less refunds) per member who ever paid.
SELECT count() AS paying_members, sum(net) AS lifetime_sales_fen,
       if(count() = 0, 0, intDiv(sum(net), count())) AS ltv_fen
FROM (SELECT member_id, sumIf(amount_fen, kind = 'earn') - sumIf(amount_fen, kind = 'clawback') AS net
      FROM ledger FINAL
      WHERE kind IN ('earn', 'clawback') AND occurred_at < {end:DateTime64(3, 'UTC')}
        AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})
      GROUP BY member_id
      HAVING countIf(kind = 'earn') > 0)
