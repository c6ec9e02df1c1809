-- Admit a job: the spec must be a job spec of the documented shape for this id, user and
-- strategy; the user's strategy breaker must allow it and the tier in force (Redis clock) must
-- have a free slot; then record it as queued, take the slot and queue it, all in one step so
-- that concurrent starts from many orchestrators cannot exceed a limit, and no crash can leave
-- an admitted job that no queue holds.
-- A(1) job id, A(2) user, A(3) strategy id, A(4) spec JSON.
-- Returns {code, tier, limit, current, retry_after_ms | reason}: code 1 admitted, 0 limit
-- reached, -1 duplicate id, 2 breaker open, 3 fleet full, 4 queue full, -2 invalid (the fifth
-- element names what is wrong; nothing is written).
local id, user, strategy = A(1), A(2), A(3)

-- The shape of docs/job-spec.schema.json that the fleet relies on: what a worker needs to run
-- the job, and ids that are the ones the keys are built from.
local function invalid(why) return { -2, '', 0, 0, why } end
local ID = '^[%w._:@-]+$'
for name, v in pairs({ jobId = id, userId = user, strategyId = strategy }) do
  if #v == 0 or #v > 128 or not string.find(v, ID) then
    return invalid(name .. ': must be 1 to 128 of letters, digits and . _ : @ -')
  end
end
if user == 'system' then return invalid('userId: system is reserved for fleet-wide status') end
local ok, spec = pcall(cjson.decode, A(4))
if not ok or type(spec) ~= 'table' then return invalid('spec: not a JSON object') end
if spec.id ~= id then return invalid('spec.id: must equal the job id') end
if spec.userId ~= user then return invalid('spec.userId: must equal the user') end
if spec.strategyId ~= strategy then return invalid('spec.strategyId: must equal the strategy id') end
if type(spec.brokerId) ~= 'string' then return invalid('spec.brokerId: must be a string') end
local cfg = spec.config
if type(cfg) ~= 'table' or type(cfg.name) ~= 'string' or type(cfg.type) ~= 'string' then
  return invalid('spec.config: must be an object with string name and type')
end
if cfg.instruments ~= nil and type(cfg.instruments) ~= 'table' then
  return invalid('spec.config.instruments: must be an array of strings')
end
if cfg.parameters ~= nil and type(cfg.parameters) ~= 'table' then
  return invalid('spec.config.parameters: must be an object')
end
local cred = spec.credentials
if type(cred) ~= 'table' or type(cred.nonce) ~= 'string' or type(cred.ciphertext) ~= 'string' then
  return invalid('spec.credentials: must be sealed credentials {nonce, ciphertext} (base64)')
end

local tier, limit = tier_of(user)
local current = redis.call('SCARD', K.user_active(user))
local bk = K.breaker(user, strategy)
local b = redis.call('HMGET', bk, 'state', 'until', 'trial')
local trial = false
if b[1] == 'open' then
  if NOW < tonumber(b[2]) then return { 2, tier, limit, current, tonumber(b[2]) - NOW } end
  trial = true
elseif b[1] == 'half' then
  local t = redis.call('HMGET', K.job(b[3]), 'status', 'started')
  local ran = (t[1] == 'running' and tonumber(t[2])) and NOW - tonumber(t[2]) or 0
  local passed = (not t[1]) or t[1] == 'stopped' or (t[1] == 'running' and ran >= C.trial)
  if not passed then return { 2, tier, limit, current, math.max(C.trial - ran, 1000) } end
  redis.call('DEL', bk, K.breaker_failures(user, strategy))
  event(b[3], 'breaker_closed', 'the trial run of strategy ' .. strategy .. ' passed', nil, nil, user)
end
if current >= limit then return { 0, tier, limit, current, 0 } end
if redis.call('SCARD', K.active) >= C.max_runners then return { 3, tier, limit, current, C.retry_after } end
if redis.call('SCARD', K.queued) >= C.max_queued then return { 4, tier, limit, current, C.retry_after } end
local jk = K.job(id)
if redis.call('EXISTS', jk) == 1 then return { -1, tier, limit, current, 0 } end
redis.call('HSET', jk, 'spec', A(4), 'user', user, 'strategy', strategy, 'status', 'queued',
  'epoch', 0, 'restarts', 0, 'created', NOW)
redis.call('SADD', K.user_active(user), id)
redis.call('SADD', K.active, id)
redis.call('SADD', K.queued, id)
redis.call('ZADD', K.user_jobs(user), NOW, id)
if trial then
  redis.call('HSET', bk, 'state', 'half', 'trial', id)
  redis.call('HDEL', bk, 'until')
end
to_queue(id)
event(id, 'admitted', 'tier ' .. tier)
return { 1, tier, limit, current + 1, 0 }
