-- The members a scheduled campaign's audience names at its run's time (docs/marketing.md),
-- from each member's newest stored state (tier, tags and computed tags, segment, formats
-- paid at, last payment, birthday, points lots, registration, coupons) and the ledger
-- (business units paid at), in member order. Accounts merged away and erased ones are
-- never in it; an empty filter (a list left empty, 0, '') is no condition.
SELECT member_id
FROM (
    SELECT member_id, argMax(state, (seq, processed_at)) AS s
    FROM member_states
    WHERE NOT startsWith(member_id, 'erased-')
    GROUP BY member_id
)
WHERE JSONExtractRaw(s, 'merged') = ''
  AND (length({tiers:Array(String)}) = 0
       OR has({tiers:Array(String)}, if(JSONExtractString(s, 'tier') = '', {default_tier:String},
                                        JSONExtractString(s, 'tier'))))
  AND (length({tags:Array(String)}) = 0
       OR hasAny(arrayConcat(JSONExtract(s, 'tags', 'Array(String)'), JSONExtract(s, 'segment_tags', 'Array(String)')),
                 {tags:Array(String)}))
  AND (length({segments:Array(String)}) = 0 OR has({segments:Array(String)}, JSONExtractString(s, 'segment')))
  AND (length({formats:Array(String)}) = 0
       OR hasAny(JSONExtract(s, 'formats_seen', 'Array(String)'), {formats:Array(String)}))
  AND ({dormant_before_ms:Int64} = 0
       OR (JSONExtractInt(s, 'last_paid_ms') > 0 AND JSONExtractInt(s, 'last_paid_ms') <= {dormant_before_ms:Int64}))
  AND ({paid_since_ms:Int64} = 0 OR JSONExtractInt(s, 'last_paid_ms') >= {paid_since_ms:Int64})
  AND ({birthday_mm:String} = '' OR startsWith(JSONExtractString(s, 'birthday'), {birthday_mm:String}))
  AND ({expiring:UInt8} = 0
       OR arraySum(arrayMap(l -> if(l[1] > {expiring_after_lot:Int64} AND l[1] <= {expiring_to_lot:Int64}, l[2], 0),
                            JSONExtract(s, 'lots', 'Array(Array(Int64))'))) > 0)
  AND ({min_points:Int64} = 0
       OR arraySum(arrayMap(l -> l[2], JSONExtract(s, 'lots', 'Array(Array(Int64))'))) >= {min_points:Int64})
  AND ({registered_since_ms:Int64} = 0 OR JSONExtractInt(s, 'registered_at_ms') >= {registered_since_ms:Int64})
  AND ({holds_coupon:String} = ''
       OR arrayExists(c -> JSONExtractString(c, 'template') = {holds_coupon:String}
                           AND JSONExtractString(c, 'status') = 'active'
                           AND JSONExtractInt(c, 'valid_until_ms') > {at_ms:Int64},
                      JSONExtractArrayRaw(s, 'coupons')))
  AND ({bu:String} = '' OR member_id IN (SELECT DISTINCT member_id FROM ledger WHERE bu_id = {bu:String}))
ORDER BY member_id
