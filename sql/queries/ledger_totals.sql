-- Totals of the ledger: rows, events, members, points issued, debited (every movement out) and net.
SELECT
    count()                                AS movements,
    uniqExact(event_id)                    AS events,
    uniqExact(member_id)                   AS members,
    sumIf(points, points > 0)              AS points_issued,
    -sumIf(points, points < 0)             AS points_debited,
    sum(points)                            AS points_net,
    countIf(kind = 'earn')                 AS payments,
    countIf(kind = 'clawback')             AS refunds,
    countIf(kind = 'tier_change')          AS tier_changes,
    countIf(kind NOT IN ('earn', 'clawback', 'tier_change')) AS member_events,
    countIf(kind IN ('register', 'sign_in'))                 AS registrations_sign_ins
FROM ledger FINAL
