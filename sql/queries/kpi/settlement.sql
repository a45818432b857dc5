-- Settlement per account (business units, merchants, the points pool...) in [start, end).
SELECT account, sum(amount_fen) AS amount_fen, sum(points) AS points
FROM settlement_lines FINAL
WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
  AND ({bu:String} = '' OR bu_id = {bu:String})
GROUP BY account
ORDER BY account
