-- Refunds whose newest row says held (not released nor expired), with their body and deadline.
SELECT member_id, payment_id, event_id, argMax(body, processed_at) AS held_body,
       argMax(deadline_ms, processed_at) AS deadline, argMax(status, processed_at) AS last_status
FROM held_refunds
GROUP BY member_id, payment_id, event_id
HAVING last_status = 'held'
ORDER BY member_id, payment_id, deadline
