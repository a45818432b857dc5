-- Net per account for one local day, optionally for one business unit or merchant.
SELECT account, sum(amount_fen) AS amount_fen, sum(points) AS points, count() AS lines
FROM settlement_lines FINAL
WHERE toDate(addSeconds(occurred_at, {offset_s:Int32})) = {day:Date}
  AND ({bu:String} = '' OR bu_id = {bu:String})
  AND ({merchant:String} = '' OR merchant_id = {merchant:String})
GROUP BY account
ORDER BY account
