-- Coupon events by kind and template (FINAL: replays counted once). Coupons only: the
-- deliveries of scheduled campaigns' notices (coupon_kind 'notice') are in KPI
-- scheduled_campaigns.
SELECT kind, template, count() AS events, uniqExact(coupon_id) AS coupons, sum(discount_fen) AS discount_fen,
       sum(merchant_share_fen) AS merchant_share_fen, sum(issuer_share_fen) AS issuer_share_fen
FROM coupon_events FINAL
WHERE coupon_kind != 'notice'
GROUP BY kind, template
ORDER BY kind, template
