-- The audit trail, newest first, filtered by operator, member, action (prefix) and time
-- (an empty filter takes every row).
SELECT request_id, toUnixTimestamp64Milli(at) AS at_ms, operator, role, scope, action, member_id, target, status,
       before, after
FROM audit_log FINAL
WHERE ({operator:String} = '' OR operator = {operator:String})
  AND ({member_id:String} = '' OR member_id = {member_id:String})
  AND ({action:String} = '' OR startsWith(action, {action:String}))
  AND at >= {start:DateTime64(3, 'UTC')}
  AND at < {end:DateTime64(3, 'UTC')}
ORDER BY at DESC, request_id
LIMIT {limit:UInt32}
