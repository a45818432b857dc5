-- The business units where a member has ledger rows (a BU operator's scope).
SELECT DISTINCT bu_id FROM ledger WHERE member_id = {member_id:String} AND bu_id != ''
