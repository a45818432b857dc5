-- Plays of one game by outcome and prize (FINAL: a play sent twice counts once).
SELECT outcome, prize_id, count() AS plays
FROM game_draws FINAL
WHERE game_id = {game:String}
GROUP BY outcome, prize_id
ORDER BY outcome, prize_id
