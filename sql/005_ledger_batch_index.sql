-- Rows of one batch share processed_at; batch_index keeps the order they were
-- applied in (what `loyalty rebuild` replays).
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS batch_index UInt32 DEFAULT 0 AFTER processed_at;
