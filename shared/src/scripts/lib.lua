-- Prelude of every store script (prepended when the script is loaded; see store/redis.rs).
-- ARGV[1..14] are the context below; a script's own arguments start at ARGV[15] (A(1)).
-- ARGV[i] is the i-th field of the Rust struct ScriptContext (shared/src/store/redis.rs; the
-- table in docs/redis-schema.md pairs each position with its field): prefix, tier_free,
-- tier_basic, tier_pro, tier_enterprise, breaker_window_ms, retention_s, audit, max_runners,
-- max_queued, retry_after_ms, ready_list, events_max_len, events_max_age_ms.
-- The scripts hold no restart or breaker policy: shared/src/policy.rs decides, over snapshots
-- these scripts read (failure_snapshot below, the admission script's breaker snapshot), and the
-- scripts apply a decision only if what it was made on is unchanged.
-- Key names mirror shared/src/keys.rs, escaping every id the same way (checked by the store
-- conformance suite). Keys are built from the prefix inside the scripts, so Redis Cluster is not
-- supported.
local P = ARGV[1]
local C = {
  limits = { free = tonumber(ARGV[2]), basic = tonumber(ARGV[3]), pro = tonumber(ARGV[4]),
    enterprise = tonumber(ARGV[5]) },
  -- How long a closed breaker's counted failures matter (the hash expires after).
  breaker_window = tonumber(ARGV[6]),
  retention = tonumber(ARGV[7]), audit = ARGV[8] == '1',
  max_runners = tonumber(ARGV[9]), max_queued = tonumber(ARGV[10]),
  retry_after = tonumber(ARGV[11]),
  -- The Redis-list queue's ready list, when jobs are queued by the scripts themselves (in the
  -- same atomic step that makes them queued); '' when the queue lives elsewhere (RabbitMQ).
  ready = ARGV[12],
  -- The event stream's caps: entries (approximate) and age in ms.
  events_max = tonumber(ARGV[13]), events_age = tonumber(ARGV[14]),
}
local CTX = 14
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
  node = function(n) return P .. ':node:' .. E(n) end,
  node_jobs = function(n) return P .. ':node:' .. E(n) .. ':jobs' end,
  commands = function(n) return P .. ':node:' .. E(n) .. ':commands' end,
  -- Set (with an expiry) when the sweep took a lapsed node's runners: that node id may never
  -- claim or renew again (a node that fences itself comes back under a new id).
  node_fenced = function(n) return P .. ':node:' .. E(n) .. ':fenced' end,
  -- Nodes by the end of their lease (ms): a runner's lease is its node's.
  node_leases = P .. ':node_leases', delayed = P .. ':delayed', nodes = P .. ':nodes',
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
  -- Fleet load samples (newest first) and the guard that spaces them.
  history = P .. ':history', history_guard = P .. ':history:guard',
  job_events = function(id) return P .. ':job:' .. E(id) .. ':events' end,
  job_pnl = function(id) return P .. ':job:' .. E(id) .. ':pnl' end,
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

-- A job's PnL history keeps at most this many points (its newest); it expires like its events.
local PNL_MAX = 2000

-- Appends the run's total PnL, read from its stats JSON, to its PnL history (store::PnlPoint),
-- unless it equals the last point: stats change with every fill's fees while the total PnL
-- changes only when a trade closes, and a heartbeat delivered twice adds nothing.
local function pnl_point(id, stats)
  local pnl = string.match(stats, '"totalPnL":"(%-?[%d%.]+)"')
  if not pnl then return end
  local k = K.job_pnl(id)
  local last = redis.call('LINDEX', k, -1)
  if last and string.match(last, ',(.*)$') == pnl then return end
  redis.call('RPUSH', k, NOW .. ',' .. pnl)
  redis.call('LTRIM', k, -PNL_MAX, -1)
  redis.call('PEXPIRE', k, C.events_age)
end

-- When node `node`'s lease ends (ms), or nil if it has none. A runner's lease is its node's:
-- every claim and heartbeat of the node moves it, whatever its runners reported.
local function node_lease(node)
  return tonumber(redis.call('ZSCORE', K.node_leases, node))
end

-- Whether node `node` may hold runners now: not fenced by a sweep, and its lease (if it has one
-- yet) not past. A node whose lease lapsed must not revive it by a claim or a heartbeat: the
-- sweep may have restarted its runners elsewhere already. Also returns when its lease ends
-- (nil: it has none).
local function node_may_hold(node)
  if redis.call('EXISTS', K.node_fenced(node)) == 1 then return false end
  local ends = node_lease(node)
  return not ends or ends > NOW, ends
end

-- Starts or extends node `node`'s lease to `lease` ms from now (the node's liveness too).
local function extend_node_lease(node, lease)
  redis.call('ZADD', K.node_leases, NOW + lease, node)
  -- Pending commands live as long as the node (a no-op when there are none).
  redis.call('PEXPIRE', K.commands(node), lease)
end

-- Whether running job `id`'s lease has lapsed: its node's lease is past, or gone.
local function lease_lapsed(id)
  local node = redis.call('HGET', K.job(id), 'node')
  local ends = node and node_lease(node)
  return not ends or ends <= NOW
end

-- A running job's last sign of life: its node's last heartbeat, or (before the node's first
-- one, or once the node is forgotten) when the job was claimed or last reported.
local function last_beat(node, hb)
  local beat = node and tonumber(redis.call('ZSCORE', K.nodes, node))
  hb = tonumber(hb)
  if beat and (not hb or beat > hb) then return beat end
  return hb
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

-- The breaker of (user, strategy) as policy::BreakerFields: its hash's four fields, '' when
-- absent (an absent hash is a closed breaker with no failures).
local BREAKER_FIELDS = { 'state', 'until', 'trial', 'failures' }
local function breaker_fields(user, strategy)
  local b = redis.call('HMGET', K.breaker(user, strategy), unpack(BREAKER_FIELDS))
  local f = {}
  for i, name in ipairs(BREAKER_FIELDS) do f[name] = b[i] or '' end
  return f
end

-- Whether the breaker of (user, strategy) is still `f` (a decoded BreakerFields).
local function breaker_is(user, strategy, f)
  local now = breaker_fields(user, strategy)
  for _, name in ipairs(BREAKER_FIELDS) do
    if now[name] ~= (f[name] or '') then return false end
  end
  return true
end

-- Writes `f` as the breaker of (user, strategy). A closed breaker with no failures is no hash;
-- one with failures expires when they stop mattering.
local function write_breaker(user, strategy, f)
  local bk = K.breaker(user, strategy)
  redis.call('DEL', bk)
  local fields = {}
  for _, name in ipairs(BREAKER_FIELDS) do
    if f[name] and f[name] ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = f[name]
    end
  end
  if #fields > 0 then redis.call('HSET', bk, unpack(fields)) end
  if (f.state or '') == '' and #fields > 0 then redis.call('PEXPIRE', bk, C.breaker_window) end
end

-- What policy::decide_failure decides on for the running job `id` (policy::FailureSnapshot),
-- as JSON. Reads only.
local function failure_snapshot(id)
  local j = redis.call('HMGET', K.job(id), 'user', 'strategy', 'started', 'streak', 'streak_since',
    'restarts', 'stop_mode', 'lost', 'lost_since', 'epoch', 'node', 'hb')
  local _, limit = tier_of(j[1])
  return cjson.encode({ job = id, now = NOW, epoch = tonumber(j[10]) or 0, node = j[11] or '',
    hb = last_beat(j[11], j[12]), strategy = j[2], stop = j[7] and true or false, started = tonumber(j[3]),
    streak = tonumber(j[4]) or 0, streak_since = tonumber(j[5]) or 0, restarts = tonumber(j[6]) or 0,
    lost = tonumber(j[8]) or 0, lost_since = tonumber(j[9]) or 0,
    breaker = breaker_fields(j[1], j[2]), held = redis.call('SCARD', K.user_active(j[1])),
    limit = limit })
end

-- Whether the decision `d` (a decoded policy::FailureDecision) was made on the job and breaker
-- as they still are: the same running epoch, the same stop request, the same breaker. Returns
-- that, the job's user and its strategy.
local function failure_current(d)
  local j = redis.call('HMGET', K.job(d.job), 'user', 'strategy', 'epoch', 'status', 'stop_mode')
  if j[4] ~= 'running' or tonumber(j[3]) ~= d.epoch or (j[5] and true or false) ~= d.stop then
    return false
  end
  return breaker_is(j[1], j[2], d.expect), j[1], j[2]
end

-- Applies the decision `d` on a failed run (checked by failure_current first): the crashed
-- event, the breaker's change, then a restart at `d.outcome.at` or the end of the job.
-- Returns 'restart' or 'failed'.
local function apply_failure(d, user, strategy)
  local id, jk, o = d.job, K.job(d.job), d.outcome
  event(id, 'crashed', d.reason)
  if o.kind == 'stopped' then
    -- A stop was requested and its node died before confirming: the user wants it stopped,
    -- not restarted. Its positions are as of its last heartbeat.
    end_job(id, user, 'stopped', { 'error', o.error })
    return 'failed'
  end
  if d.breaker then write_breaker(user, strategy, d.breaker) end
  if d.opened then
    event(id, 'breaker_opened', d.opened)
    redis.call('HINCRBY', K.counters, 'breaker_openings', 1)
  end
  local c = d.count
  local book = { 'streak', c.streak, 'streak_since', c.streak_since, 'lost', c.lost,
    'lost_since', c.lost_since, 'restarts', c.restarts }
  if o.kind == 'failed' then
    end_job(id, user, 'failed', { 'error', o.error, unpack(book) })
    return 'failed'
  end
  redis.call('HSET', jk, 'status', 'crashed', 'error', d.reason, 'ended', NOW, 'restart_at', o.at,
    unpack(book))
  redis.call('ZADD', K.delayed, o.at, id)
  event(id, 'restart_scheduled', 'restart at ' .. o.at)
  return 'restart'
end
