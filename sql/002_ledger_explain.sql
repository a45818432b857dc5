-- Each movement keeps its explanation (base, tier, campaigns, behaviour rules,
-- caps, each with its points) as the JSON the core wrote.
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS explain String DEFAULT '' AFTER processed_at;
