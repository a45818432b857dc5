#!lua name=loyalty
-- The engine's Redis Functions (Redis 7.0+): loaded at worker start with FUNCTION LOAD
-- REPLACE; they survive restarts and replicate. Each call names the keys of ONE hash
-- slot: a member's keys (tagged {member id}), or one budget, guest or leaderboard key
-- (tests/unit/test_redis_slots.py checks it). The Rust core builds the calls of the
-- accrual hot path (core_ext/src/plan.rs); streams/sinks/balances.py the others.
--
-- Keys of a member m (namespace ns):
--   ns:m:{m}    hash   seq, state (core JSON), balance, earned, clawed_back, events,
--                      sv_balance, gc (last day its records were swept), held
--   ns:ev:{m}   hash   applied-event records: event id -> "K|applied_ms|..." (small;
--                      kept for the refund horizon, then swept)
--   ns:ob:{m}   hash   outbox: event id -> ledger rows JSON, until the ledger topic has them
--   ns:h:{m}    list   the member's recent movements (bounded)
-- Point arithmetic is HINCRBY on strings (int64 in Redis); comparisons made in Lua are
-- on integers below 2^53, which Lua's doubles hold exactly.

-- ly_read: KEYS per member: m, ev, ob.
-- ARGV: n_members, then per member: n_ids, then n_ids x (id, want_outbox 0|1).
-- Returns per member: {seq, state, held, then per id: record or false, outbox rows or false}.
local function ly_read(keys, args)
  local out = {}
  local p = 2
  for i = 1, tonumber(args[1]) do
    local k = (i - 1) * 3
    local head = redis.call('HMGET', keys[k + 1], 'seq', 'state', 'held')
    local one = {head[1] or '0', head[2] or false, head[3] or '0'}
    local n = tonumber(args[p])
    p = p + 1
    for j = 1, n do
      local rec = redis.call('HGET', keys[k + 2], args[p])
      one[#one + 1] = rec or false
      if rec and args[p + 1] == '1' then
        one[#one + 1] = redis.call('HGET', keys[k + 3], args[p]) or false
      else
        one[#one + 1] = false
      end
      p = p + 2
    end
    out[i] = one
  end
  return out
end

-- Sweeps a member's records applied before `before_ms`, at most once a day.
local function sweep(mkey, evkey, day, before_ms)
  local last = tonumber(redis.call('HGET', mkey, 'gc') or '0')
  if last >= day then return end
  redis.call('HSET', mkey, 'gc', day)
  local all = redis.call('HGETALL', evkey)
  for i = 1, #all, 2 do
    local at = tonumber(string.match(all[i + 1], '^%a|(%d+)|'))
    if at and at < before_ms then redis.call('HDEL', evkey, all[i]) end
  end
end

-- ly_apply: the atomic step of each member, checked against the member's sequence number.
-- KEYS per member: m, ev, ob, h.
-- ARGV: n_members, day, sweep_before_ms, ttl_s, history_len, then per member:
--   expected seq, state, d_balance, d_earned, d_clawed, d_events, d_sv,
--   n_records, (id, record) x n, n_outbox, (id, rows) x n, n_history, entry x n.
-- A record written as "K|~|..." is stamped with Redis' clock (ms) in place of "~".
-- Returns per member: "ok", or "c:<stored seq>" (a conflict: nothing written).
local function ly_apply(keys, args)
  local t = redis.call('TIME')
  local now = tostring(t[1] * 1000 + math.floor(t[2] / 1000))
  local day, before, ttl, hlen = tonumber(args[2]), tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local out = {}
  local p = 6
  for i = 1, tonumber(args[1]) do
    local k = (i - 1) * 4
    local mkey, evkey, obkey, hkey = keys[k + 1], keys[k + 2], keys[k + 3], keys[k + 4]
    local seq = redis.call('HGET', mkey, 'seq') or '0'
    local n_rec = tonumber(args[p + 7])
    local n_ob = tonumber(args[p + 8 + 2 * n_rec])
    local n_h = tonumber(args[p + 9 + 2 * n_rec + 2 * n_ob])
    local next_p = p + 10 + 2 * n_rec + 2 * n_ob + n_h
    if seq ~= args[p] then
      out[i] = 'c:' .. seq
    else
      redis.call('HSET', mkey, 'state', args[p + 1], 'seq', tostring(tonumber(seq) + 1))
      if args[p + 2] ~= '0' then redis.call('HINCRBY', mkey, 'balance', args[p + 2]) end
      if args[p + 3] ~= '0' then redis.call('HINCRBY', mkey, 'earned', args[p + 3]) end
      if args[p + 4] ~= '0' then redis.call('HINCRBY', mkey, 'clawed_back', args[p + 4]) end
      if args[p + 5] ~= '0' then redis.call('HINCRBY', mkey, 'events', args[p + 5]) end
      if args[p + 6] ~= '0' then redis.call('HINCRBY', mkey, 'sv_balance', args[p + 6]) end
      local q = p + 8
      if n_rec > 0 then
        sweep(mkey, evkey, day, before)
        for j = 1, n_rec do
          local rec = args[q + 1]
          if string.sub(rec, 3, 3) == '~' then rec = string.sub(rec, 1, 2) .. now .. string.sub(rec, 4) end
          redis.call('HSET', evkey, args[q], rec)
          q = q + 2
        end
        redis.call('EXPIRE', evkey, ttl)
      end
      q = q + 1
      if n_ob > 0 then
        for j = 1, n_ob do
          redis.call('HSET', obkey, args[q], args[q + 1])
          q = q + 2
        end
        redis.call('EXPIRE', obkey, ttl)
      end
      q = q + 1
      if n_h > 0 then
        for j = 1, n_h do
          redis.call('LPUSH', hkey, args[q])
          q = q + 1
        end
        redis.call('LTRIM', hkey, 0, hlen - 1)
        redis.call('EXPIRE', hkey, ttl)
      end
      out[i] = 'ok'
    end
    p = next_p
  end
  return out
end

-- ly_reserve: takes units of one budget for events, idempotently by event id, before
-- their members' writes. KEYS[1]: the budget (ns:budget:{id}).
-- ARGV: now_ms, limit (-1: none), then (event id, units, member id) x n.
-- `spent` counts reservations too, so two workers can never overspend together.
-- Returns per reservation: 1 (reserved) or 0 (the budget is short).
local function ly_reserve(keys, args)
  local key, now, limit = keys[1], args[1], tonumber(args[2])
  local out = {}
  local i = 1
  for p = 3, #args, 3 do
    local field, units = 'r:' .. args[p], tonumber(args[p + 1])
    local held = redis.call('HGET', key, field)
    local before = 0
    if held then before = tonumber(string.match(held, '^(-?%d+)')) end
    local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
    if units > before and limit >= 0 and spent + units - before > limit then
      out[i] = 0
    else
      if units ~= before then redis.call('HINCRBY', key, 'spent', units - before) end
      redis.call('HSET', key, field, units .. '|' .. args[p + 2] .. '|' .. now)
      out[i] = 1
    end
    i = i + 1
  end
  return out
end

-- ly_settle: ends reservations. KEYS[1]: the budget. ARGV: (event id, 1 commit | 0 release) x n.
-- A commit keeps the units spent; a release gives them back. Unknown ids: nothing.
local function ly_settle(keys, args)
  local key = keys[1]
  local done = 0
  for p = 1, #args, 2 do
    local field = 'r:' .. args[p]
    local held = redis.call('HGET', key, field)
    if held then
      if args[p + 1] == '0' then
        redis.call('HINCRBY', key, 'spent', -tonumber(string.match(held, '^(-?%d+)')))
      end
      redis.call('HDEL', key, field)
      done = done + 1
    end
  end
  return done
end

-- ly_board: a leaderboard shard takes members' absolute scores, newest version wins, so
-- a redelivered or reordered ledger message changes nothing twice.
-- KEYS: the shard's sorted set, its versions hash (same tag). ARGV: ttl_s, then
-- (member, score, version) x n. Returns how many scores were taken.
local function ly_board(keys, args)
  local taken = 0
  for p = 2, #args, 3 do
    local v = redis.call('HGET', keys[2], args[p])
    if not v or tonumber(v) < tonumber(args[p + 2]) then
      redis.call('ZADD', keys[1], args[p + 1], args[p])
      redis.call('HSET', keys[2], args[p], args[p + 2])
      taken = taken + 1
    end
  end
  redis.call('EXPIRE', keys[1], args[1])
  redis.call('EXPIRE', keys[2], args[1])
  return taken
end

-- ly_guest: keeps a guest payment's compact fact for crediting at registration, once per
-- event id. KEYS[1]: ns:guest:{kind:id}. ARGV: ttl_s, event id, fact. Returns 1 (kept) or 0.
local function ly_guest(keys, args)
  local kept = redis.call('HSETNX', keys[1], args[2], args[3])
  redis.call('EXPIRE', keys[1], args[1])
  return kept
end

redis.register_function{function_name = 'ly_read', callback = ly_read, flags = {'no-writes'}}
redis.register_function('ly_apply', ly_apply)
redis.register_function('ly_reserve', ly_reserve)
redis.register_function('ly_settle', ly_settle)
redis.register_function('ly_board', ly_board)
redis.register_function('ly_guest', ly_guest)
