-- Cross-format: per pair of formats, members who paid in both in [start, end), and the
-- points earned in each format and spent in each format by members active in two or more.
WITH per AS (SELECT member_id, groupUniqArray(format) AS formats FROM ledger FINAL
             WHERE kind = 'earn' AND format != ''
               AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
             GROUP BY member_id)
SELECT f1, f2, count() AS members
FROM (SELECT member_id, arrayJoin(arrayFilter(p -> p.1 < p.2, arrayFlatten(arrayMap(a -> arrayMap(b -> (a, b), formats), formats)))) AS pair,
             pair.1 AS f1, pair.2 AS f2
      FROM per WHERE length(formats) >= 2)
GROUP BY f1, f2
ORDER BY f1, f2
