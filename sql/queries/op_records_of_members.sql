-- The newest record of each HTTP operation of some members.
SELECT member_id, event_id, argMax(record, processed_at) AS last_record
FROM op_records
WHERE member_id IN {members:Array(String)}
GROUP BY member_id, event_id
