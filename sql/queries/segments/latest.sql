-- Each member's segment and tags from the latest refresh.
SELECT member_id, segment, tags FROM member_segments FINAL ORDER BY member_id
