-- Points the ledger moved on one local day (for the statement's tie-out).
SELECT sum(points) AS points, count() AS rows
FROM ledger FINAL
WHERE toDate(addSeconds(occurred_at, {offset_s:Int32})) = {day:Date}
  AND ({bu:String} = '' OR bu_id = {bu:String})
  AND ({merchant:String} = '' OR merchant_id = {merchant:String})
