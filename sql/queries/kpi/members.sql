-- Members: registered before {end}, and new members (first registration in [start, end)).
SELECT
    countIf(first < {end:DateTime64(3, 'UTC')})                                           AS members,
    countIf(first >= {start:DateTime64(3, 'UTC')} AND first < {end:DateTime64(3, 'UTC')}) AS new_members
FROM (SELECT member_id, min(occurred_at) AS first FROM ledger FINAL WHERE kind = 'register' GROUP BY member_id)
