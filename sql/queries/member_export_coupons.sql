-- Every coupon event of one member, oldest first (a personal data export).
SELECT event_id, kind, coupon_id, template, trigger, coupon_kind, face_value_fen, discount_fen,
       toUnixTimestamp64Milli(valid_until) AS valid_until_ms, toUnixTimestamp64Milli(occurred_at) AS occurred_at_ms
FROM coupon_events FINAL
WHERE member_id = {member_id:String}
ORDER BY occurred_at, event_id
