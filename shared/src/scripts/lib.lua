-- Prelude of every store script (see store/redis.rs): the head of each EVAL script, or the
-- body of the Redis Function library that registers every script as a function.
-- ARGV[1..15] (a function's args[1..15]) are the context below; a script's own arguments
-- start at ARGV[16] (A(1)). ARGV[i] is the i-th field of the Rust struct ScriptContext (shared/src/store/redis.rs; the
-- table in docs/redis-schema.md pairs each position with its field): prefix, tier_free,
-- tier_basic, tier_pro, tier_enterprise, breaker_window_ms, retention_s, audit, max_runners,
-- max_queued, retry_after_ms, ready_list, events_max_len, events_max_age_ms, wake_channel.
-- The scripts hold no restart or breaker policy: shared/src/policy.rs decides, over snapshots
-- these scripts read (failure_snapshot below, the admission script's breaker snapshot), and the
-- scripts apply a decision only if what it was made on is unchanged.
-- Key names mirror shared/src/keys.rs, escaping every id the same way (checked by the store
-- conformance suite). Keys are built from the prefix inside the scripts: on a Redis Cluster the
-- prefix carries the hash tag of the fleet (or of one shard of it), so every key of a call is in
-- one slot.
-- The context of the call being run, set by begin() below at the start of every call: the key
-- prefix P, the settings C, the key names K, the call's own arguments (A(i), NARGS) and Redis'
-- clock NOW. They are locals of the prelude, not globals, so that the same text serves as a
-- Redis Function library (loaded once; each function calls begin with its arguments) and as
-- the head of an EVAL script (its last line calls begin with ARGV).
local P, C, K, ARGS, NARGS, NOW
local CTX = 15
local function A(i) return ARGS[CTX + i] end

-- One key part, escaped like keys::escape: '%', ':', '{', '}' never appear in a part, so key
-- names are injective whatever separators the ids contain.
local ESC = { ['%'] = '%25', [':'] = '%3A', ['{'] = '%7B', ['}'] = '%7D' }
local function E(s)
  if not string.find(s, '[%%:{}]') then return s end
  return (string.gsub(s, '[%%:{}]', ESC))
end

-- The key names under prefix `p`.
local function keys_under(p)
  return {
    job = function(id) return p .. ':job:' .. E(id) end,
    user_jobs = function(u) return p .. ':user:' .. E(u) .. ':jobs' end,
    user_active = function(u) return p .. ':user:' .. E(u) .. ':active' end,
    subscription = function(u) return p .. ':user:' .. E(u) .. ':subscription' end,
    breaker = function(u, s) return p .. ':breaker:' .. E(u) .. ':' .. E(s) end,
    node = function(n) return p .. ':node:' .. E(n) end,
    node_jobs = function(n) return p .. ':node:' .. E(n) .. ':jobs' end,
    commands = function(n) return p .. ':node:' .. E(n) .. ':commands' end,
    -- Set (with an expiry) when the sweep took a lapsed node's runners: that node id may never
    -- claim or renew again (a node that fences itself comes back under a new id).
    node_fenced = function(n) return p .. ':node:' .. E(n) .. ':fenced' end,
    -- Nodes by the end of their lease (ms): a runner's lease is its node's.
    node_leases = p .. ':node_leases', delayed = p .. ':delayed', nodes = p .. ':nodes',
    audit = p .. ':audit', sweep_guard = p .. ':sweep:guard',
    -- Every job holding a slot, and every job waiting in the queue: fleet-wide backpressure.
    active = p .. ':active', queued = p .. ':queued',
    -- Queued jobs whose publish to an outside queue is not confirmed yet, by when.
    pending = p .. ':pending',
    -- Jobs failed within the last hour, by when (the failed_last_hour gauge).
    failed = p .. ':failed',
    apikey = function(id) return p .. ':apikey:' .. E(id) end,
    user_keys = function(u) return p .. ':user:' .. E(u) .. ':keys' end,
    -- The fleet's lifecycle event stream, and each job's own history of those events.
    events = p .. ':events',
    -- Fleet-wide counters (hash): breaker_openings.
    counters = p .. ':counters',
    -- Fleet load samples (newest first) and the guard that spaces them.
    history = p .. ':history', history_guard = p .. ':history:guard',
    job_events = function(id) return p .. ':job:' .. E(id) .. ':events' end,
    job_pnl = function(id) return p .. ':job:' .. E(id) .. ':pnl' end,
  }
end

-- The settings of context `a` (ARGV[2..15]).
local function settings_of(a)
  return {
    limits = { free = tonumber(a[2]), basic = tonumber(a[3]), pro = tonumber(a[4]),
      enterprise = tonumber(a[5]) },
    -- How long a closed breaker's counted failures matter (the hash expires after).
    breaker_window = tonumber(a[6]),
    retention = tonumber(a[7]), audit = a[8] == '1',
    max_runners = tonumber(a[9]), max_queued = tonumber(a[10]),
    retry_after = tonumber(a[11]),
    -- The Redis-list queue's ready list, when jobs are queued by the scripts themselves (in the
    -- same atomic step that makes them queued); '' when the queue lives elsewhere (RabbitMQ).
    ready = a[12],
    -- The event stream's caps: entries (approximate) and age in ms.
    events_max = tonumber(a[13]), events_age = tonumber(a[14]),
    -- A sharded fleet's wake-up channel ('' when there is none): see announce below.
    wake = a[15],
  }
end

-- The context C and K were last made from: a Function library keeps them between calls and
-- makes them again only when a call brings another context (another prefix or settings).
local LAST = {}

-- Sets the context of a call with arguments `args` (the 15 context arguments first).
local function begin(args)
  ARGS, NARGS = args, #args - CTX
  local same = true
  for i = 1, CTX do
    if args[i] ~= LAST[i] then
      same = false
      break
    end
  end
  if not same then
    P, C, K = args[1], settings_of(args), keys_under(args[1])
    LAST = {}
    for i = 1, CTX do LAST[i] = args[i] end
  end
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The window of the failed_last_hour gauge.
local HOUR_MS = 3600000

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
-- and by age once per sweep) and returns its stream id.
local function stream_event(id, kind, reason, epoch, node, user)
  return redis.call('XADD', K.events, 'MAXLEN', '~', C.events_max, '*', 'job', id, 'user', user,
    'type', kind, 'epoch', tostring(epoch), 'node', node, 'reason', reason or '', 'at', NOW)
end

-- What event() reads from a job's record: its user, epoch and node, and its latest claim's
-- stream id and start (claimed_event, started).
local EVENT_FIELDS = { 'user', 'epoch', 'node', 'claimed_event', 'started' }

-- Appends the JSON entries `...` to job `id`'s own history (its newest JOB_EVENTS_MAX, expiring
-- `events_age` after the last), after the job's latest claim if its record `j` (EVENT_FIELDS)
-- still holds one. The claim script writes no history entry: the claim lives on the record
-- (claimed_event, with the record's epoch, node and started, which only the next claim changes)
-- until the job's next event or claim moves it here, so the history keeps every claim in order
-- and store::RedisStore::job_events appends the one still on the record.
local function history_push(id, j, ...)
  local entries = { ... }
  if j[4] then
    table.insert(entries, 1, cjson.encode({ id = j[4], job = id, user = j[1] or '', type = 'claimed',
      epoch = j[2] or '0', node = j[3] or '', reason = '', at = tonumber(j[5]) or 0 }))
    redis.call('HDEL', K.job(id), 'claimed_event')
  end
  if #entries == 0 then return end
  local hk = K.job_events(id)
  redis.call('RPUSH', hk, unpack(entries))
  redis.call('LTRIM', hk, -JOB_EVENTS_MAX, -1)
  redis.call('PEXPIRE', hk, C.events_age)
end

-- Appends a lifecycle event of job `id` to the fleet's event stream and to the job's own
-- history (so reading one job's history costs what its own events cost). User, epoch and node
-- default to the job's current ones. (The admission's and the latest claim's events are the
-- exceptions: their history entries are read from the job's record, see store_admit.lua and
-- history_push.)
local function event(id, kind, reason, epoch, node, user)
  local j = redis.call('HMGET', K.job(id), unpack(EVENT_FIELDS))
  user, epoch, node = user or j[1] or '', epoch or j[2] or 0, node or j[3] or ''
  local e = { job = id, user = user, type = kind, epoch = tostring(epoch), node = node,
    reason = reason or '', at = NOW }
  e.id = stream_event(id, kind, e.reason, e.epoch, node, user)
  history_push(id, j, cjson.encode(e))
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
-- Announces work on a sharded fleet's wake-up channel (shared/src/wake.rs): idle nodes cannot
-- block on every shard's ready list, so they wait for this. `what` is `ready` or `command <node>`.
local function announce(what)
  if C.wake ~= '' then
    local kind, rest = string.match(what, '^(%S+)(.*)$')
    redis.call('PUBLISH', C.wake, kind .. ' ' .. P .. rest)
  end
end

local function to_queue(id)
  if C.ready ~= '' then
    -- Only a list that was empty announces: a busy list's nodes are not idle.
    if redis.call('LPUSH', C.ready, id) == 1 then announce('ready') end
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

-- A decoded JSON object: a table with no array items (an empty array still passes here, since
-- cjson cannot tell it from {}).
local function is_object(v) return type(v) == 'table' and v[1] == nil end
local function is_strings(v)
  if type(v) ~= 'table' then return false end
  local n = 0
  for _, item in pairs(v) do
    if type(item) ~= 'string' then return false end
    n = n + 1
  end
  return n == #v
end

-- The admission's answer refusing an invalid start.
local function invalid(why) return { -2, '', 0, 0, why } end

-- The admission's answer refusing job `id` of `user` and `strategy` with spec `raw` (JSON), or
-- nil: the spec must have the shape of docs/job-spec.schema.json (what a worker needs to run
-- the job, what the Rust JobSpec reads), and its ids must be the ones the keys are built from.
-- Checked before anything is read or written, so a refused spec leaves no trace.
local function spec_refusal(id, user, strategy, raw)
  local ID = '^[%w._:@-]+$'
  for name, v in pairs({ jobId = id, userId = user, strategyId = strategy }) do
    if #v == 0 or #v > 128 or not string.find(v, ID) then
      return invalid(name .. ': must be 1 to 128 of letters, digits and . _ : @ -')
    end
  end
  if user == 'system' then return invalid('userId: system is reserved for fleet-wide status') end
  local ok, spec = pcall(cjson.decode, raw)
  if not ok then return invalid('spec: not valid JSON (' .. tostring(spec) .. ')') end
  -- cjson decodes [] and {} to the same empty table; the text's first character tells them apart.
  if type(spec) ~= 'table' or not string.find(raw, '^[ \t\r\n]*{') then
    return invalid('spec: must be a JSON object')
  end
  if spec.id ~= id then return invalid('spec.id: must equal the job id') end
  if spec.userId ~= user then return invalid('spec.userId: must equal the user') end
  if spec.strategyId ~= strategy then return invalid('spec.strategyId: must equal the strategy id') end
  if type(spec.brokerId) ~= 'string' then return invalid('spec.brokerId: must be a string') end
  local cfg = spec.config
  if not is_object(cfg) then return invalid('spec.config: must be an object') end
  local CONFIG = { name = true, type = true, parameters = true, riskManagement = true, instruments = true }
  for k in pairs(cfg) do
    if not CONFIG[k] then return invalid('spec.config.' .. tostring(k) .. ': unknown field') end
  end
  if type(cfg.name) ~= 'string' then return invalid('spec.config.name: must be a string') end
  if type(cfg.type) ~= 'string' then return invalid('spec.config.type: must be a string') end
  if cfg.parameters ~= nil and not is_object(cfg.parameters) then
    return invalid('spec.config.parameters: must be an object')
  end
  if cfg.instruments ~= nil and not is_strings(cfg.instruments) then
    return invalid('spec.config.instruments: must be an array of strings')
  end
  local risk = cfg.riskManagement
  if risk ~= nil and risk ~= cjson.null then
    if not is_object(risk) then return invalid('spec.config.riskManagement: must be an object or null') end
    local RISK = { maxPositionSize = true, stopLossPercent = true, takeProfitPercent = true }
    for k in pairs(risk) do
      if not RISK[k] then return invalid('spec.config.riskManagement.' .. tostring(k) .. ': unknown field') end
    end
    for k in pairs(RISK) do
      if type(risk[k]) ~= 'number' then
        return invalid('spec.config.riskManagement.' .. k .. ': must be a number')
      end
    end
  end
  local cred = spec.credentials
  if not is_object(cred) or (cred.nonce == nil and cred.ciphertext == nil) then
    return invalid('spec.credentials: must be sealed credentials {nonce, ciphertext}, never the '
      .. 'plain apiKey and apiSecret (docs/redis-schema.md says how to seal them)')
  end
  if type(cred.nonce) ~= 'string' or #cred.nonce ~= 16 or not string.find(cred.nonce, '^[%w+/]+$') then
    return invalid('spec.credentials.nonce: must be the 12-byte nonce in base64 (16 characters)')
  end
  local ct = cred.ciphertext
  if type(ct) ~= 'string' or #ct < 24 or #ct % 4 ~= 0 or not string.find(ct, '^[%w+/]+=?=?$') then
    return invalid('spec.credentials.ciphertext: must be the ciphertext and its 16-byte tag in '
      .. 'base64 with padding')
  end
end

-- Admit a job: the spec must be a job spec of the documented shape for this id, user and
-- strategy; the user's strategy breaker must allow it and the tier in force (Redis clock) must
-- have a free slot; then record it as queued, take the slot and queue it, all in one step so
-- that concurrent starts from many orchestrators cannot exceed a limit, and no crash can leave
-- an admitted job that no queue holds.
-- The strategy's breaker is decided by the store (policy::Breaker::admission), never here: when
-- the breaker is not closed and no decision made on it as it is now came with the call, the
-- script answers its snapshot and writes nothing; the store decides and calls again (or refuses).
-- A start under a closed breaker, the common case, is one call.
-- `id`, `user`, `strategy` id, `raw` spec JSON, `decision` '' or the breaker decision
-- JSON {expect, after, closed}: the breaker it was made on, the breaker to write if the job is
-- admitted, the trial that passed if this start closes the breaker; `checked` '1' when the caller
-- made the spec from runfleet's typed JobSpec (runfleet's own store), whose type guarantees
-- the shape spec_refusal checks: the checks are then skipped. Any other client leaves it out.
-- Returns {code, tier, limit, current, retry_after_ms | reason | snapshot}: code 1 admitted, 0
-- limit reached, -1 duplicate id, 3 fleet full, 4 queue full, 5 the breaker needs a decision (the fifth element is its snapshot JSON
-- {now, breaker, trial_status, trial_started}), -2 invalid (the fifth element names what is
-- wrong). Nothing is written unless the code is 1.
local function admit(id, user, strategy, raw, decision, checked)
  if checked ~= '1' then
    local refused = spec_refusal(id, user, strategy, raw)
    if refused then return refused end
  end

  local tier, limit = tier_of(user)
  local current = redis.call('SCARD', K.user_active(user))
  local breaker = breaker_fields(user, strategy)
  local decided = (decision or '') ~= '' and cjson.decode(decision)
  if decided and not breaker_is(user, strategy, decided.expect) then decided = false end
  if breaker.state ~= '' and not decided then
    local t = breaker.trial ~= '' and redis.call('HMGET', K.job(breaker.trial), 'status', 'started') or {}
    return { 5, tier, limit, current, cjson.encode({ now = NOW, breaker = breaker,
      trial_status = t[1] or nil, trial_started = tonumber(t[2]) }) }
  end
  if current >= limit then return { 0, tier, limit, current, 0 } end
  if redis.call('SCARD', K.active) >= C.max_runners then return { 3, tier, limit, current, C.retry_after } end
  if redis.call('SCARD', K.queued) >= C.max_queued then return { 4, tier, limit, current, C.retry_after } end
  local jk = K.job(id)
  if redis.call('EXISTS', jk) == 1 then return { -1, tier, limit, current, 0 } end
  -- The admission's event: in the fleet's stream; the job's own history reads it from the
  -- record (admitted_event, tier, created), which saves the history list's writes (a JSON
  -- encoding and three commands) on the hottest path.
  local ev = stream_event(id, 'admitted', 'tier ' .. tier, 0, '', user)
  redis.call('HSET', jk, 'spec', raw, 'user', user, 'strategy', strategy, 'status', 'queued',
    'epoch', 0, 'restarts', 0, 'created', NOW, 'tier', tier, 'admitted_event', ev)
  redis.call('SADD', K.user_active(user), id)
  redis.call('SADD', K.active, id)
  redis.call('SADD', K.queued, id)
  redis.call('ZADD', K.user_jobs(user), NOW, id)
  if decided then
    write_breaker(user, strategy, decided.after)
    if decided.closed then
      event(decided.closed, 'breaker_closed', 'the trial run of strategy ' .. strategy .. ' passed', nil,
        nil, user)
    end
  end
  to_queue(id)
  return { 1, tier, limit, current + 1, 0 }
end

-- EVAL: this call's context. (The Function library is this text without this last line; each
-- function calls begin with its own arguments.)
begin(ARGV)
