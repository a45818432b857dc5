-- Totals of the ledger: rows, members, points issued, clawed back and net.
SELECT
    count()                          AS movements,
    uniqExact(member_id)             AS members,
    sumIf(points, points > 0)        AS points_issued,
    -sumIf(points, points < 0)       AS points_clawed_back,
    sum(points)                      AS points_net,
    countIf(kind = 'earn')           AS payments,
    countIf(kind = 'clawback')       AS refunds
FROM ledger FINAL
