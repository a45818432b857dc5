-- Every member's newest stored sequence number (their last write's): a member whose Redis
-- seq is below it lost writes.
SELECT member_id, max(seq) AS last_seq FROM member_states GROUP BY member_id
