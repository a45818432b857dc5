-- Receipt points (小票积分) in [start, end), by submission time (in the BU filter):
-- submitted, approved (by the rules or a reviewer), rejected, still pending, the points the
-- approved ones earned, and the average review time of the reviewed ones (seconds from
-- submission to a reviewer's decision; the rules' own approvals are not reviews).
WITH
    steps AS (SELECT * FROM receipts FINAL
              WHERE submitted_at >= {start:DateTime64(3, 'UTC')} AND submitted_at < {end:DateTime64(3, 'UTC')}
                AND ({bu:String} = '' OR bu_id = {bu:String})),
    earned AS (SELECT event_id, sum(points) AS points FROM ledger FINAL
               WHERE channel = 'receipt' AND kind = 'earn' GROUP BY event_id)
SELECT
    uniqExactIf(receipt_id, status = 'submitted')                                        AS submitted,
    uniqExactIf(receipt_id, status = 'approved')                                         AS approved,
    uniqExactIf(receipt_id, status = 'approved' AND reviewer = 'auto')                   AS approved_auto,
    uniqExactIf(receipt_id, status = 'rejected')                                         AS rejected,
    submitted - approved - rejected                                                      AS pending,
    (SELECT sum(e.points) FROM earned AS e WHERE e.event_id IN (SELECT receipt_id FROM steps WHERE status = 'approved'))
                                                                                         AS points_earned,
    toInt64(ifNotFinite(avgIf(dateDiff('millisecond', submitted_at, occurred_at),
                              status IN ('approved', 'rejected') AND reviewer != 'auto') / 1000, 0))
                                                                                         AS avg_review_s
FROM steps
