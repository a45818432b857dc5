-- A member's bindings in force (ids, plates, referral phones; not the other kinds the
-- table keeps, such as approvals): the newest row per key that still names this member.
SELECT key, kind, value, toUnixTimestamp64Milli(at) AS at_ms
FROM (
    SELECT key, argMax(kind, processed_at) AS kind, argMax(member_id, processed_at) AS member_id,
           argMax(value, processed_at) AS value, max(processed_at) AS at
    FROM bindings
    WHERE key IN (SELECT key FROM bindings WHERE member_id = {member_id:String})
    GROUP BY key
)
WHERE member_id = {member_id:String} AND kind IN ('identity', 'plate', 'referral_phone')
ORDER BY key
