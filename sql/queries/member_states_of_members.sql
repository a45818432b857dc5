-- The newest stored state of some members (their last write's), with its sequence number.
SELECT member_id, argMax(state, (seq, processed_at)) AS last_state, max(seq) AS last_seq
FROM member_states
WHERE member_id IN {members:Array(String)}
GROUP BY member_id
