-- One page of bindings, the newest row per key (member_id empty: unbound; for the kept
-- kinds, parking sessions and gateway routes, value empty: ended), with when it was written.
SELECT key, argMax(kind, processed_at) AS kind, argMax(member_id, processed_at) AS member_id,
       argMax(value, processed_at) AS value, toUnixTimestamp64Milli(max(processed_at)) AS at_ms
FROM bindings
GROUP BY key
ORDER BY key
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
