-- Coupon events by kind and template (FINAL: replays counted once).
SELECT kind, template, count() AS events, uniqExact(coupon_id) AS coupons, sum(discount_fen) AS discount_fen,
       sum(merchant_share_fen) AS merchant_share_fen, sum(issuer_share_fen) AS issuer_share_fen
FROM coupon_events FINAL
GROUP BY kind, template
ORDER BY kind, template
