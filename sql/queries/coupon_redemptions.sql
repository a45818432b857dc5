-- The coupons redeemed at one merchant in a time range, newest first (the console's list).
SELECT coupon_id, member_id, template, event_id AS payment_id, discount_fen, merchant_share_fen, issuer_share_fen,
       toUnixTimestamp64Milli(occurred_at) AS at_ms
FROM coupon_events FINAL
WHERE kind = 'redeemed' AND merchant_id = {merchant:String}
  AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
ORDER BY occurred_at DESC, coupon_id
LIMIT 1000
