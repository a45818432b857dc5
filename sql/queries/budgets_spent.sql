-- Units each budget has given, as the ledger has them (what `ly_reserve` took and
-- `ly_settle` kept): campaign points on payments, and a unit per coupon issued for its
-- trigger's budget and its template's stock; a unit per points-mall exchange, less its returns; a seat per
-- members' event sign-up, less its cancellations.
SELECT JSONExtractString(p, 'id') AS budget_id, sum(JSONExtractInt(p, 'points')) AS units
FROM ledger FINAL ARRAY JOIN JSONExtractArrayRaw(explain) AS p
WHERE kind = 'earn' AND JSONExtractString(p, 'rule') = 'campaign'
GROUP BY budget_id
UNION ALL
SELECT concat('trigger:', trigger) AS budget_id, toInt64(count()) AS units
FROM coupon_events FINAL WHERE kind = 'issued' AND trigger != '' GROUP BY trigger
UNION ALL
SELECT concat('stock:', template) AS budget_id, toInt64(count()) AS units
FROM coupon_events FINAL WHERE kind = 'issued' GROUP BY template
UNION ALL
SELECT concat('mall:', JSONExtractString(p, 'id')) AS budget_id,
       toInt64(sum(if(JSONExtractString(p, 'rule') = 'mall_exchange', 1, -1))) AS units
FROM ledger FINAL ARRAY JOIN JSONExtractArrayRaw(explain) AS p
WHERE kind IN ('mall_exchange', 'mall_return') AND JSONExtractString(p, 'rule') IN ('mall_exchange', 'mall_return')
GROUP BY budget_id
UNION ALL
SELECT concat('event:', JSONExtractString(p, 'id')) AS budget_id,
       toInt64(sum(if(JSONExtractString(p, 'rule') = 'event_seat', 1, -1))) AS units
FROM ledger FINAL ARRAY JOIN JSONExtractArrayRaw(explain) AS p
WHERE kind IN ('event_signup', 'event_cancel') AND JSONExtractString(p, 'rule') IN ('event_seat', 'event_seat_returned')
GROUP BY budget_id
