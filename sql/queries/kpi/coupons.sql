-- Coupons per template in [start, end): issued, pushed, redeemed (less returned), expired;
-- redemption rate (bp of issued), discount and the business units' share of it (the cost),
-- the sales of the payments that redeemed them, and ROI = those sales per fen of cost (bp).
WITH
    ev AS (SELECT * FROM coupon_events FINAL
           WHERE template != '' AND occurred_at >= {start:DateTime64(3, 'UTC')}
             AND occurred_at < {end:DateTime64(3, 'UTC')}),
    paid AS (SELECT event_id, any(amount_fen) AS amount_fen FROM ledger FINAL WHERE kind = 'earn' GROUP BY event_id),
    attributed AS (SELECT ev.template AS template, sum(paid.amount_fen) AS sales_fen
                   FROM ev INNER JOIN paid ON ev.event_id = paid.event_id
                   WHERE ev.kind = 'redeemed' GROUP BY ev.template)
SELECT template, issued, pushed, redeemed, expired, redemption_bp, discount_fen, issuer_cost_fen,
       a.sales_fen AS sales_fen, if(issuer_cost_fen <= 0, 0, intDiv(a.sales_fen * 10000, issuer_cost_fen)) AS roi_bp
FROM (SELECT template,
             uniqExactIf(coupon_id, kind = 'issued') AS issued,
             uniqExactIf(coupon_id, kind = 'pushed') AS pushed,
             countIf(kind = 'redeemed') - countIf(kind = 'returned') AS redeemed,
             uniqExactIf(coupon_id, kind = 'expired') AS expired,
             if(issued = 0, 0, intDiv(redeemed * 10000, issued)) AS redemption_bp,
             sumIf(discount_fen, kind IN ('redeemed', 'returned')) AS discount_fen,
             sumIf(issuer_share_fen, kind IN ('redeemed', 'returned')) AS issuer_cost_fen
      FROM ev GROUP BY template) AS t
LEFT JOIN attributed AS a ON t.template = a.template
ORDER BY template
SETTINGS join_use_nulls = 0
