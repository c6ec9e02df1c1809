-- Prelude of every store script (prepended when the script is loaded; see store/redis.rs).
-- ARGV[1..23] are the context below; a script's own arguments start at ARGV[24] (A(1)).
-- ARGV[i] is the i-th field of the Rust struct ScriptContext (shared/src/store/redis.rs; the
-- table in docs/redis-schema.md pairs each position with its field): prefix, tier_free,
-- tier_basic, tier_pro, tier_enterprise, max_restarts, restart_window_ms,
-- restart_base_delay_ms, restart_max_delay_ms, restart_stable_ms, breaker_failures,
-- breaker_window_ms, breaker_cooldown_ms, breaker_trial_ms, retention_s, audit, max_runners,
-- max_queued, retry_after_ms, max_node_losses, ready_list, events_max_len, events_max_age_ms.
-- Key names mirror shared/src/keys.rs, escaping every id the same way (checked by the store
-- conformance suite). Keys are built from the prefix inside the scripts, so Redis Cluster is not
-- supported.
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
  retry_after = tonumber(ARGV[19]), max_lost = tonumber(ARGV[20]),
  -- The Redis-list queue's ready list, when jobs are queued by the scripts themselves (in the
  -- same atomic step that makes them queued); '' when the queue lives elsewhere (RabbitMQ).
  ready = ARGV[21],
  -- The event stream's caps: entries (approximate) and age in ms.
  events_max = tonumber(ARGV[22]), events_age = tonumber(ARGV[23]),
}
local CTX = 23
local function A(i) return ARGV[CTX + i] end
local NARGS = #ARGV - CTX

-- One key part, escaped like keys::escape: '%', ':', '{', '}' never appear in a part, so key
-- names are injective whatever separators the ids contain.
local ESC = { ['%'] = '%25', [':'] = '%3A', ['{'] = '%7B', ['}'] = '%7D' }
local function E(s) return (string.gsub(s, '[%%:{}]', ESC)) end

local K = {
  job = function(id) return P .. ':job:' .. E(id) end,
  user_jobs = function(u) return P .. ':user:' .. E(u) .. ':jobs' end,
  user_active = function(u) return P .. ':user:' .. E(u) .. ':active' end,
  subscription = function(u) return P .. ':user:' .. E(u) .. ':subscription' end,
  breaker = function(u, s) return P .. ':breaker:' .. E(u) .. ':' .. E(s) end,
  breaker_failures = function(u, s) return P .. ':breaker:' .. E(u) .. ':' .. E(s) .. ':failures' end,
  node = function(n) return P .. ':node:' .. E(n) end,
  node_jobs = function(n) return P .. ':node:' .. E(n) .. ':jobs' end,
  commands = function(n) return P .. ':node:' .. E(n) .. ':commands' end,
  leases = P .. ':leases', delayed = P .. ':delayed', nodes = P .. ':nodes',
  audit = P .. ':audit', sweep_guard = P .. ':sweep:guard',
  -- Every job holding a slot, and every job waiting in the queue: fleet-wide backpressure.
  active = P .. ':active', queued = P .. ':queued',
  -- Queued jobs whose publish to an outside queue is not confirmed yet, by when.
  pending = P .. ':pending',
  -- Jobs failed within the last hour, by when (the failed_last_hour gauge).
  failed = P .. ':failed',
  apikey = function(id) return P .. ':apikey:' .. E(id) end,
  user_keys = function(u) return P .. ':user:' .. E(u) .. ':keys' end,
  -- The fleet's lifecycle event stream, and each job's own history of those events.
  events = P .. ':events',
  -- Fleet-wide counters (hash): breaker_openings.
  counters = P .. ':counters',
  job_events = function(id) return P .. ':job:' .. E(id) .. ':events' end,
}

-- The window of the failed_last_hour gauge.
local HOUR_MS = 3600000

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

-- A job's own history keeps at most this many events (its newest).
local JOB_EVENTS_MAX = 1000

-- Appends a lifecycle event of job `id` to the fleet's event stream (capped by length here,
-- and by age once per sweep) and to the job's own history (so reading one job's history costs
-- what its own events cost). User, epoch and node default to the job's current ones; a caller
-- that knows all three (the hot paths: admission, claim) saves reading them.
local function event(id, kind, reason, epoch, node, user)
  if not (epoch and node and user) then
    local j = redis.call('HMGET', K.job(id), 'user', 'epoch', 'node')
    user, epoch, node = user or j[1] or '', epoch or j[2] or 0, node or j[3] or ''
  end
  local e = { job = id, user = user, type = kind, epoch = tostring(epoch), node = node,
    reason = reason or '', at = NOW }
  e.id = redis.call('XADD', K.events, 'MAXLEN', '~', C.events_max, '*', 'job', e.job, 'user', e.user,
    'type', kind, 'epoch', e.epoch, 'node', e.node, 'reason', e.reason, 'at', NOW)
  local hk = K.job_events(id)
  redis.call('RPUSH', hk, cjson.encode(e))
  redis.call('LTRIM', hk, -JOB_EVENTS_MAX, -1)
  redis.call('PEXPIRE', hk, C.events_age)
end

-- Whether job `id`'s lease has lapsed: its `leases` score (when it ends) is past, or it has
-- none. The one place a lease's life is kept.
local function lease_lapsed(id)
  local ends = tonumber(redis.call('ZSCORE', K.leases, id))
  return not ends or ends <= NOW
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

-- A job just became queued: with the Redis-list queue it is pushed in this same step, so no
-- crash can leave a queued job that no queue holds; with an outside queue it waits in
-- `pending` until its publish is confirmed (the sweep publishes it again if that never comes).
local function to_queue(id)
  if C.ready ~= '' then
    redis.call('LPUSH', C.ready, id)
  else
    redis.call('ZADD', K.pending, NOW, id)
  end
end

-- Ends a job for good (stopped or failed): frees the user's slot, starts the retention.
local function end_job(id, user, status, fields)
  local jk = K.job(id)
  redis.call('HSET', jk, 'status', status, 'ended', NOW, unpack(fields))
  redis.call('HDEL', jk, 'restart_at')
  redis.call('SREM', K.user_active(user), id)
  redis.call('SREM', K.active, id)
  redis.call('SREM', K.queued, id)
  redis.call('ZREM', K.leases, id)
  redis.call('ZREM', K.delayed, id)
  redis.call('ZREM', K.pending, id)
  redis.call('EXPIRE', jk, C.retention)
  local reason = {}
  for i = 1, #fields, 2 do
    if fields[i] == 'error' or fields[i] == 'flattened' then
      reason[#reason + 1] = fields[i] .. ': ' .. fields[i + 1]
    end
  end
  event(id, status, table.concat(reason, '; '))
  if status == 'failed' then
    redis.call('ZADD', K.failed, NOW, id)
    redis.call('ZREMRANGEBYSCORE', K.failed, '-inf', NOW - HOUR_MS)
  end
end

-- Counts a failure of job `id` against the breaker of (user, strategy); returns whether the
-- breaker is open afterwards. Mirrors policy::Breaker::record_failure.
local function breaker_failure(user, strategy, id)
  local bk = K.breaker(user, strategy)
  local fk = K.breaker_failures(user, strategy)
  local function open(why)
    event(id, 'breaker_opened', why)
    redis.call('HSET', bk, 'state', 'open', 'until', NOW + C.cooldown)
    redis.call('HDEL', bk, 'trial')
    redis.call('DEL', fk)
    redis.call('HINCRBY', K.counters, 'breaker_openings', 1)
    return true
  end
  local st = redis.call('HMGET', bk, 'state', 'until', 'trial')
  local state = st[1] or 'closed'
  if state == 'half' and st[3] == id then
    return open('the trial run of strategy ' .. strategy .. ' failed')
  end
  if state == 'closed' then
    redis.call('ZREMRANGEBYSCORE', fk, '-inf', NOW - C.breaker_window)
    redis.call('ZADD', fk, NOW, id .. '@' .. NOW)
    redis.call('PEXPIRE', fk, C.breaker_window)
    if redis.call('ZCARD', fk) >= C.breaker_failures then
      return open('strategy ' .. strategy .. ' failed ' .. C.breaker_failures .. ' times')
    end
    return false
  end
  if state == 'open' then return NOW < tonumber(st[2]) end
  return true -- half-open, another job's trial is going
end

-- Whether the breaker of (user, strategy) keeps job `id` from restarting after a node loss,
-- which it does not count: open and cooling down, or half-open with another job's trial going.
-- Mirrors policy::Breaker::blocks.
local function breaker_blocks(user, strategy, id)
  local st = redis.call('HMGET', K.breaker(user, strategy), 'state', 'until', 'trial')
  if st[1] == 'open' then return NOW < tonumber(st[2]) end
  if st[1] == 'half' then return st[3] ~= id end
  return false
end

-- A run of job `id` failed: kind 'crash' (the strategy panicked or erred: counts toward its
-- breaker and the max_restarts budget) or 'lost' (its lease expired, the node died: never
-- counted by the breaker; the max_node_losses budget). Restart it after a growing delay, or
-- fail it. Mirrors policy::after_failure. Returns 'restart' or 'failed'.
local function after_failure(id, reason, kind)
  local jk = K.job(id)
  local j = redis.call('HMGET', jk, 'user', 'strategy', 'started', 'streak', 'streak_since', 'restarts',
    'stop_mode', 'lost', 'lost_since')
  local user, strategy = j[1], j[2]
  event(id, 'crashed', reason)
  if j[7] then
    -- A stop was requested and its node died before confirming: the user wants it stopped,
    -- not restarted. Its positions are as of its last heartbeat.
    end_job(id, user, 'stopped', { 'error', reason .. '; a stop was requested, so it is not restarted' })
    return 'failed'
  end
  local started = tonumber(j[3])
  local streak, since, total = tonumber(j[4]) or 0, tonumber(j[5]) or NOW, tonumber(j[6]) or 0
  local lost, lost_since = tonumber(j[8]) or 0, tonumber(j[9]) or NOW
  local stable = started and NOW - started >= C.stable
  if stable or streak == 0 or NOW - since >= C.restart_window then
    streak, since = 0, NOW
  end
  if stable or lost == 0 or NOW - lost_since >= C.restart_window then
    lost, lost_since = 0, NOW
  end
  local open
  if kind == 'lost' then
    open = breaker_blocks(user, strategy, id)
  else
    open = breaker_failure(user, strategy, id)
  end
  local _, limit = tier_of(user)
  local count, bound, what = streak, C.max_restarts, ' restarts'
  if kind == 'lost' then count, bound, what = lost, C.max_lost, ' node losses' end
  local fail
  if redis.call('SCARD', K.user_active(user)) > limit then
    fail = reason .. '; not restarted: the user holds more runners than their tier allows'
  elseif count >= bound then
    fail = reason .. '; not restarted: ' .. count .. what .. ' within ' .. C.restart_window .. ' ms'
  elseif open then
    fail = reason .. "; not restarted: the strategy's circuit breaker is open"
  end
  local book = { 'streak', streak, 'streak_since', since, 'lost', lost, 'lost_since', lost_since }
  if fail then
    end_job(id, user, 'failed', { 'error', fail, unpack(book) })
    return 'failed'
  end
  local delay = math.min(C.base_delay * 2 ^ math.min(count, 32), C.max_delay)
  if kind == 'lost' then book[6] = lost + 1 else book[2] = streak + 1 end
  redis.call('HSET', jk, 'status', 'crashed', 'error', reason, 'ended', NOW, 'restarts', total + 1,
    'restart_at', NOW + delay, unpack(book))
  redis.call('ZREM', K.leases, id)
  redis.call('ZADD', K.delayed, NOW + delay, id)
  event(id, 'restart_scheduled', 'restart at ' .. (NOW + delay))
  return 'restart'
end
