-- The members an audience names (docs/back-office.md), from each member's newest stored
-- state (tier, tags and computed tags, segment, last payment) and the ledger (business
-- units visited), in member order. An empty filter takes every member.
SELECT member_id
FROM (
    SELECT member_id, argMax(state, (seq, processed_at)) AS s
    FROM member_states
    GROUP BY member_id
)
WHERE (length({tiers:Array(String)}) = 0
       OR has({tiers:Array(String)}, if(JSONExtractString(s, 'tier') = '', {default_tier:String},
                                        JSONExtractString(s, 'tier'))))
  AND (length({tags:Array(String)}) = 0
       OR hasAny(arrayConcat(JSONExtract(s, 'tags', 'Array(String)'), JSONExtract(s, 'segment_tags', 'Array(String)')),
                 {tags:Array(String)}))
  AND (length({segments:Array(String)}) = 0 OR has({segments:Array(String)}, JSONExtractString(s, 'segment')))
  AND ({paid_since_ms:Int64} = 0 OR JSONExtractInt(s, 'last_paid_ms') >= {paid_since_ms:Int64})
  AND ({bu:String} = '' OR member_id IN (SELECT DISTINCT member_id FROM ledger WHERE bu_id = {bu:String}))
ORDER BY member_id
