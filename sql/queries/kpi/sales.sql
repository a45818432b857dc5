-- Sales in [start, end): members' (payments less refunds) and guests', the members'
-- share (basis points), and the members' average ticket (fen per payment).
WITH
    m AS (SELECT sumIf(amount_fen, kind = 'earn') - sumIf(amount_fen, kind = 'clawback') AS sales,
                 countIf(kind = 'earn') AS payments
          FROM ledger FINAL
          WHERE kind IN ('earn', 'clawback')
            AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
            AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String})),
    g AS (SELECT sumIf(amount_fen, type = 'payment') - sumIf(amount_fen, type = 'refund') AS sales,
                 countIf(type = 'payment') AS payments
          FROM guest_payments FINAL
          WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
            AND ({bu:String} = '' OR bu_id = {bu:String}) AND ({format:String} = '' OR format = {format:String}))
SELECT
    m.sales                                                         AS member_sales_fen,
    m.payments                                                      AS member_payments,
    g.sales                                                         AS guest_sales_fen,
    g.payments                                                      AS guest_payments,
    m.sales + g.sales                                               AS total_sales_fen,
    if(m.sales + g.sales = 0, 0, intDiv(m.sales * 10000, m.sales + g.sales)) AS member_share_bp,
    if(m.payments = 0, 0, intDiv(m.sales, m.payments))              AS member_avg_ticket_fen
FROM m, g
