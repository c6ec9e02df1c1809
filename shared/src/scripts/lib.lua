-- Prelude of every store script (prepended when the script is loaded; see store/redis.rs).
-- ARGV[1..19] are the context below; a script's own arguments start at ARGV[20] (A(1)).
-- Key names mirror shared/src/keys.rs (checked by the store conformance suite). Keys are built
-- from the prefix inside the scripts, so Redis Cluster is not supported.
local P = ARGV[1]
local C = {
  limits = { free = tonumber(ARGV[2]), basic = tonumber(ARGV[3]), pro = tonumber(ARGV[4]),
    enterprise = tonumber(ARGV[5]) },
  max_restarts = tonumber(ARGV[6]), restart_window = tonumber(ARGV[7]),
  base_delay = tonumber(ARGV[8]), max_delay = tonumber(ARGV[9]), stable = tonumber(ARGV[10]),
  breaker_failures = tonumber(ARGV[11]), breaker_window = tonumber(ARGV[12]),
  cooldown = tonumber(ARGV[13]), trial = tonumber(ARGV[14]),
  retention = tonumber(ARGV[15]), audit = ARGV[16] == '1',
  max_runners = tonumber(ARGV[17]), max_queued = tonumber(ARGV[18]),
  retry_after = tonumber(ARGV[19]),
}
local function A(i) return ARGV[19 + i] end
local NARGS = #ARGV - 19

local K = {
  job = function(id) return P .. ':job:' .. id end,
  hb = function(id) return P .. ':heartbeat:' .. id end,
  user_jobs = function(u) return P .. ':user:' .. u .. ':jobs' end,
  user_active = function(u) return P .. ':user:' .. u .. ':active' end,
  subscription = function(u) return P .. ':user:' .. u .. ':subscription' end,
  breaker = function(u, s) return P .. ':breaker:' .. u .. ':' .. s end,
  node = function(n) return P .. ':node:' .. n end,
  node_jobs = function(n) return P .. ':node:' .. n .. ':jobs' end,
  commands = function(n) return P .. ':node:' .. n .. ':commands' end,
  leases = P .. ':leases', delayed = P .. ':delayed', nodes = P .. ':nodes',
  audit = P .. ':audit', sweep_guard = P .. ':sweep:guard',
  -- Every job holding a slot, and every job waiting in the queue: fleet-wide backpressure.
  active = P .. ':active', queued = P .. ':queued',
  apikey = function(id) return P .. ':apikey:' .. id end,
  user_keys = function(u) return P .. ':user:' .. u .. ':keys' end,
}

local NOW
do
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends an accepted write to the audit stream (testing.audit).
local function audit(op, id, epoch, node)
  if C.audit then
    redis.call('XADD', K.audit, 'MAXLEN', '~', 100000, '*', 'op', op, 'job', id,
      'epoch', tostring(epoch), 'node', node or '')
  end
end

-- The tier in force for a user (an expired subscription is free) and its limit.
local function tier_of(user)
  local sub = redis.call('HMGET', K.subscription(user), 'tier', 'expiresAtMs')
  local tier = 'free'
  if sub[1] and C.limits[sub[1]] and tonumber(sub[2]) and NOW < tonumber(sub[2]) then
    tier = sub[1]
  end
  return tier, C.limits[tier]
end

-- Ends a job for good (stopped or failed): frees the user's slot, starts the retention.
local function end_job(id, user, status, fields)
  local jk = K.job(id)
  redis.call('HSET', jk, 'status', status, 'ended', NOW, unpack(fields))
  redis.call('HDEL', jk, 'restart_at')
  redis.call('SREM', K.user_active(user), id)
  redis.call('SREM', K.active, id)
  redis.call('SREM', K.queued, id)
  redis.call('DEL', K.hb(id))
  redis.call('ZREM', K.leases, id)
  redis.call('ZREM', K.delayed, id)
  redis.call('EXPIRE', jk, C.retention)
end

-- Counts a failure of job `id` against the breaker of (user, strategy); returns whether the
-- breaker is open afterwards. Mirrors policy::Breaker::record_failure.
local function breaker_failure(user, strategy, id)
  local bk = K.breaker(user, strategy)
  local fk = bk .. ':failures'
  local st = redis.call('HMGET', bk, 'state', 'until', 'trial')
  local state = st[1] or 'closed'
  if state == 'half' and st[3] == id then
    redis.call('HSET', bk, 'state', 'open', 'until', NOW + C.cooldown)
    redis.call('HDEL', bk, 'trial')
    redis.call('DEL', fk)
    return true
  end
  if state == 'closed' then
    redis.call('ZREMRANGEBYSCORE', fk, '-inf', NOW - C.breaker_window)
    redis.call('ZADD', fk, NOW, id .. '@' .. NOW)
    redis.call('PEXPIRE', fk, C.breaker_window)
    if redis.call('ZCARD', fk) >= C.breaker_failures then
      redis.call('HSET', bk, 'state', 'open', 'until', NOW + C.cooldown)
      redis.call('DEL', fk)
      return true
    end
    return false
  end
  if state == 'open' then return NOW < tonumber(st[2]) end
  return true -- half-open, another job's trial is going
end

-- A run of job `id` failed (crash or error): restart it after a growing delay, or fail it.
-- Mirrors policy::after_failure. Returns 'restart' or 'failed'.
local function after_failure(id, reason)
  local jk = K.job(id)
  local j = redis.call('HMGET', jk, 'user', 'strategy', 'started', 'streak', 'streak_since', 'restarts',
    'stop_mode')
  local user, strategy = j[1], j[2]
  if j[7] then
    -- A stop was requested and its node died before confirming: the user wants it stopped,
    -- not restarted. Its positions are as of its last heartbeat.
    end_job(id, user, 'stopped', { 'error', reason .. '; a stop was requested, so it is not restarted' })
    return 'failed'
  end
  local started = tonumber(j[3])
  local streak, since, total = tonumber(j[4]) or 0, tonumber(j[5]) or NOW, tonumber(j[6]) or 0
  if (started and NOW - started >= C.stable) or streak == 0 or NOW - since >= C.restart_window then
    streak, since = 0, NOW
  end
  local open = breaker_failure(user, strategy, id)
  local _, limit = tier_of(user)
  local fail
  if redis.call('SCARD', K.user_active(user)) > limit then
    fail = reason .. '; not restarted: the user holds more runners than their tier allows'
  elseif streak >= C.max_restarts then
    fail = reason .. '; not restarted: ' .. streak .. ' restarts within ' .. C.restart_window .. ' ms'
  elseif open then
    fail = reason .. "; not restarted: the strategy's circuit breaker is open"
  end
  if fail then
    end_job(id, user, 'failed', { 'error', fail, 'streak', streak, 'streak_since', since })
    return 'failed'
  end
  local delay = math.min(C.base_delay * 2 ^ math.min(streak, 32), C.max_delay)
  redis.call('HSET', jk, 'status', 'crashed', 'error', reason, 'ended', NOW, 'streak', streak + 1,
    'streak_since', since, 'restarts', total + 1, 'restart_at', NOW + delay)
  redis.call('DEL', K.hb(id))
  redis.call('ZREM', K.leases, id)
  redis.call('ZADD', K.delayed, NOW + delay, id)
  return 'restart'
end
