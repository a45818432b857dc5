-- Coupons per template in [start, end): issued, pushed, redeemed (less returned), expired;
-- redemption rate (bp of issued), discount and the business units' share of it.
SELECT template,
       uniqExactIf(coupon_id, kind = 'issued') AS issued,
       uniqExactIf(coupon_id, kind = 'pushed') AS pushed,
       countIf(kind = 'redeemed') - countIf(kind = 'returned') AS redeemed,
       uniqExactIf(coupon_id, kind = 'expired') AS expired,
       if(issued = 0, 0, intDiv(redeemed * 10000, issued)) AS redemption_bp,
       sumIf(discount_fen, kind IN ('redeemed', 'returned')) AS discount_fen,
       sumIf(issuer_share_fen, kind IN ('redeemed', 'returned')) AS issuer_cost_fen
FROM coupon_events FINAL
WHERE template != '' AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
GROUP BY template
ORDER BY template
