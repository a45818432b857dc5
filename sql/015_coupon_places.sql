-- Where a coupon was redeemed (or its redemption returned): the business unit and merchant,
-- for the merchants' own lists in the console (empty on issued and expired rows).
ALTER TABLE coupon_events ADD COLUMN IF NOT EXISTS bu_id LowCardinality(String) DEFAULT '' AFTER reason;
ALTER TABLE coupon_events ADD COLUMN IF NOT EXISTS merchant_id String DEFAULT '' AFTER bu_id;
