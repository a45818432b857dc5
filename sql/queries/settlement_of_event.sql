-- The settlement lines of one event (a payment, a redemption, a reversal...).
SELECT line_no, kind, account, amount_fen, points, bu_id, merchant_id, member_id
FROM settlement_lines FINAL
WHERE event_id = {event_id:String}
ORDER BY kind, line_no
