#!lua name=loyalty
-- The engine's Redis Functions (Redis 7.0+): loaded at worker start with FUNCTION LOAD
-- REPLACE; they survive restarts and replicate. Each call names the keys of ONE hash
-- slot: a member's keys (tagged {member id}), or one budget, guest or leaderboard key
-- (tests/unit/test_redis_slots.py checks it). The Rust core builds the calls of the
-- accrual hot path (core_ext/src/batch.rs); streams/state/store.py the others. Reads
-- are plain commands: arguments and results cross into Lua at about 2 µs per KB, so
-- what goes through a script is kept small (docs/hot-path.md).
--
-- Keys of a member m (namespace ns):
--   ns:m:{m}    hash   seq, state (core JSON), balance, earned, debited, events,
--                      sv_balance, gc (last day its records were swept), held
--   ns:ev:{m}   hash   applied-event records: event id -> "K|applied_ms|..." (small;
--                      kept for the refund horizon, then swept)
--   ns:ob:{m}   hash   outbox: event id -> ledger rows JSON, until the ledger topic has them
--   ns:h:{m}    list   the member's recent movements (bounded)
-- Point arithmetic is HINCRBY on strings (int64 in Redis); comparisons made in Lua are
-- on integers below 2^53, which Lua's doubles hold exactly.

-- Calls a command on `key` with args[from .. from + n - 1] appended (`n` values), in
-- chunks: Lua's unpack is limited to a few thousand values.
local function call_chunked(cmd, key, args, from, n)
  local i = 0
  while i < n do
    local m = math.min(1000, n - i)
    redis.call(cmd, key, unpack(args, from + i, from + i + m - 1))
    i = i + m
  end
end

-- Sweeps a member's records applied before `before_ms`.
local function sweep(evkey, before_ms)
  local all = redis.call('HGETALL', evkey)
  for i = 1, #all, 2 do
    local at = tonumber(string.match(all[i + 1], '^%a|(%d+)|'))
    if at and at < before_ms then redis.call('HDEL', evkey, all[i]) end
  end
end

-- ly_apply: the atomic step of each member, checked against the member's sequence number
-- (one member per call on a Redis Cluster; several on a single Redis, each checked alone).
-- KEYS per member: m, ev, ob, h.
-- ARGV: n_members, day, sweep_before_ms, ttl_s, history_len, then per member:
--   expected seq, mode ('a': the counters below are the new values, 'd': deltas), state,
--   balance, earned, debited, events, sv_balance, sweep (1: sweep the records today),
--   n_records, (id, record) x n, n_outbox, (id, rows) x n, n_history, entry x n (oldest first).
-- A record written as "K|~|..." is stamped with Redis' clock (ms) in place of "~".
-- Returns per member: "ok", or "c:<stored seq>" (a conflict: nothing written).
local COUNTERS = {'balance', 'earned', 'debited', 'events', 'sv_balance'}
local function ly_apply(keys, args)
  local t = redis.call('TIME')
  local now = tostring(t[1] * 1000 + math.floor(t[2] / 1000))
  local day, before, ttl, hlen = args[2], tonumber(args[3]), args[4], tonumber(args[5])
  local out = {}
  local p = 6
  for i = 1, tonumber(args[1]) do
    local k = (i - 1) * 4
    local mkey, evkey, obkey, hkey = keys[k + 1], keys[k + 2], keys[k + 3], keys[k + 4]
    local n_rec = tonumber(args[p + 9])
    local n_ob = tonumber(args[p + 10 + 2 * n_rec])
    local n_h = tonumber(args[p + 11 + 2 * n_rec + 2 * n_ob])
    local next_p = p + 12 + 2 * n_rec + 2 * n_ob + n_h
    local seq = redis.call('HGET', mkey, 'seq') or '0'
    if seq ~= args[p] then
      out[i] = 'c:' .. seq
    else
      if args[p + 1] == 'a' then
        redis.call('HSET', mkey, 'seq', tostring(tonumber(seq) + 1), 'state', args[p + 2], 'balance', args[p + 3],
                   'earned', args[p + 4], 'debited', args[p + 5], 'events', args[p + 6],
                   'sv_balance', args[p + 7])
      else
        redis.call('HSET', mkey, 'seq', tostring(tonumber(seq) + 1), 'state', args[p + 2])
        for c = 1, 5 do
          if args[p + 2 + c] ~= '0' then redis.call('HINCRBY', mkey, COUNTERS[c], args[p + 2 + c]) end
        end
      end
      local q = p + 10
      if n_rec > 0 then
        if args[p + 8] == '1' then
          sweep(evkey, before)
          redis.call('HSET', mkey, 'gc', day)
        end
        for j = 1, n_rec do
          local rec = args[q + 2 * j - 1]
          if string.sub(rec, 3, 3) == '~' then args[q + 2 * j - 1] = string.sub(rec, 1, 2) .. now .. string.sub(rec, 4) end
        end
        call_chunked('HSET', evkey, args, q, 2 * n_rec)
        redis.call('EXPIRE', evkey, ttl)
      end
      q = q + 2 * n_rec + 1
      if n_ob > 0 then
        call_chunked('HSET', obkey, args, q, 2 * n_ob)
        redis.call('EXPIRE', obkey, ttl)
      end
      q = q + 2 * n_ob + 1
      if n_h > 0 then
        call_chunked('LPUSH', hkey, args, q, n_h)
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
-- event id. KEYS[1]: ns:guest:{kind:id}. ARGV: ttl_s, event id, fact. Returns 1 (kept),
-- 0 (this same fact was kept before) or 2 (another fact was kept under this event id).
local function ly_guest(keys, args)
  local kept = redis.call('HSETNX', keys[1], args[2], args[3])
  redis.call('EXPIRE', keys[1], args[1])
  if kept == 1 then
    return 1
  end
  if redis.call('HGET', keys[1], args[2]) == args[3] then
    return 0
  end
  return 2
end

redis.register_function('ly_apply', ly_apply)
redis.register_function('ly_reserve', ly_reserve)
redis.register_function('ly_settle', ly_settle)
redis.register_function('ly_board', ly_board)
redis.register_function('ly_guest', ly_guest)
