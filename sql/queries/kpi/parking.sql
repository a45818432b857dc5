-- Car park exits in [start, end): sessions, members' sessions, minutes, what the free
-- minutes (tier, spend, coupons) were worth, points used and what was due.
SELECT count() AS sessions, countIf(member_id != '') AS member_sessions, sum(minutes) AS minutes,
       sum(gross_fee_fen - fee_fen) AS free_minutes_cost_fen, sum(points_used) AS points_used,
       sum(due_fen) AS due_fen
FROM parking_sessions FINAL
WHERE exit_at >= {start:DateTime64(3, 'UTC')} AND exit_at < {end:DateTime64(3, 'UTC')}
  AND ({bu:String} = '' OR car_park = {bu:String})
