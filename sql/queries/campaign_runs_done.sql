-- The runs of a scheduled campaign the scheduler finished (its audit rows, action
-- campaign.run): what a run record lost from Redis is checked against before a run.
SELECT target, after
FROM audit_log FINAL
WHERE action = 'campaign.run' AND target = {target:String}
