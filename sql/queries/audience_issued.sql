-- Coupons issued by one audience send (trigger audience:<send id>).
SELECT count() AS issued, uniqExact(member_id) AS members
FROM coupon_events FINAL
WHERE kind = 'issued' AND trigger = {trigger:String}
