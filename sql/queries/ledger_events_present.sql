-- Which of these event ids the ledger has.
SELECT DISTINCT event_id FROM ledger WHERE event_id IN {ids:Array(String)}
