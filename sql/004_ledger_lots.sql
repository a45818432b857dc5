-- The lots a spend, reversal or expiry touched ([month_index, points] pairs, JSON):
-- what `loyalty rebuild` needs to restore a reversal to the very same lots.
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS lots String DEFAULT '' AFTER explain;
