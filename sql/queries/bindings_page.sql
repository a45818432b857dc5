-- One page of bindings, the newest row per key (member_id empty: unbound).
SELECT key, argMax(kind, processed_at) AS kind, argMax(member_id, processed_at) AS member_id,
       argMax(value, processed_at) AS value
FROM bindings
GROUP BY key
ORDER BY key
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
