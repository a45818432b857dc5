-- Scheduled campaigns in [start, end): runs, members reached (sent the campaign's push),
-- pushed (a coupon or a notice), delivered (the webhook answered 2xx) and held (the
-- frequency cap, once per dormancy, a payment since, the member limit; `capped` the
-- frequency cap alone); their coupons issued and
-- redeemed (less returned), the sales of the payments that redeemed them, the cost (the
-- issuer's share of the discounts) and ROI = those sales per fen of cost (bp).
WITH
    parts AS (SELECT member_id, JSONExtractString(part, 'rule') AS rule, JSONExtractString(part, 'id') AS pid
              FROM ledger FINAL ARRAY JOIN JSONExtractArrayRaw(explain) AS part
              WHERE kind = 'campaign_push'
                AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}),
    reach AS (SELECT splitByChar(':', pid)[1] AS campaign, uniqExact(splitByChar(':', pid)[2]) AS runs,
                     uniqExact(member_id) AS reached,
                     countIf(rule IN ('campaign_coupon', 'campaign_notice')) AS pushed,
                     countIf(rule = 'campaign_skipped') AS held,
                     countIf(rule = 'campaign_skipped' AND endsWith(pid, ':frequency_cap')) AS capped
              FROM parts WHERE rule LIKE 'campaign_%' GROUP BY campaign),
    ev AS (SELECT event_id, kind, coupon_id, issuer_share_fen, splitByChar(':', trigger)[2] AS cid
           FROM coupon_events FINAL
           WHERE startsWith(trigger, 'campaign:')
             AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}),
    coup AS (SELECT cid, uniqExactIf(coupon_id, kind = 'issued') AS issued,
                    uniqExactIf(coupon_id, kind = 'pushed') AS delivered,
                    countIf(kind = 'redeemed') - countIf(kind = 'returned') AS redeemed,
                    sumIf(issuer_share_fen, kind IN ('redeemed', 'returned')) AS cost
             FROM ev GROUP BY cid),
    paid AS (SELECT event_id, any(amount_fen) AS amount_fen FROM ledger FINAL WHERE kind = 'earn' GROUP BY event_id),
    sales AS (SELECT ev.cid AS sid, sum(paid.amount_fen) AS sold
              FROM ev INNER JOIN paid ON ev.event_id = paid.event_id
              WHERE ev.kind = 'redeemed' GROUP BY ev.cid)
SELECT r.campaign AS campaign, r.runs AS runs, r.reached AS reached, r.pushed AS pushed, r.held AS held,
       r.capped AS capped, c.delivered AS delivered, c.issued AS issued, c.redeemed AS redeemed,
       s.sold AS sales_fen, c.cost AS cost_fen,
       if(c.cost <= 0, 0, intDiv(s.sold * 10000, c.cost)) AS roi_bp
FROM reach AS r
LEFT JOIN coup AS c ON r.campaign = c.cid
LEFT JOIN sales AS s ON r.campaign = s.sid
ORDER BY campaign
SETTINGS join_use_nulls = 0
