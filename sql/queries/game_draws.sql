-- The draws of one game (optionally one member's), newest first: what an operator
-- audits an outcome with (draw, the odds and stock the play saw, outcome, prize).
SELECT event_id AS play_id, member_id, game_kind, draw, odds_total, odds, prize_id, outcome, cost_points,
       rules_version, occurred_at
FROM game_draws FINAL
WHERE game_id = {game:String} AND ({member:String} = '' OR member_id = {member:String})
ORDER BY occurred_at DESC, event_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
