-- Guest payments kept for BI.
SELECT count() AS payments, sum(amount_fen) AS amount_fen FROM guest_payments FINAL
