-- Admit a job: the spec must be a job spec of the documented shape for this id, user and
-- strategy; the user's strategy breaker must allow it and the tier in force (Redis clock) must
-- have a free slot; then record it as queued, take the slot and queue it, all in one step so
-- that concurrent starts from many orchestrators cannot exceed a limit, and no crash can leave
-- an admitted job that no queue holds.
-- The strategy's breaker is decided by the store (policy::Breaker::admission), never here: when
-- the breaker is not closed and no decision made on it as it is now came with the call, the
-- script answers its snapshot and writes nothing; the store decides and calls again (or refuses).
-- A start under a closed breaker, the common case, is one call.
-- A(1) job id, A(2) user, A(3) strategy id, A(4) spec JSON, A(5) '' or the breaker decision
-- JSON {expect, after, closed}: the breaker it was made on, the breaker to write if the job is
-- admitted, the trial that passed if this start closes the breaker.
-- Returns {code, tier, limit, current, retry_after_ms | reason | snapshot}: code 1 admitted, 0
-- limit reached, -1 duplicate id, 3 fleet full, 4 queue full, 5 the breaker needs a decision (the fifth element is its snapshot JSON
-- {now, breaker, trial_status, trial_started}), -2 invalid (the fifth element names what is
-- wrong). Nothing is written unless the code is 1.
local id, user, strategy = A(1), A(2), A(3)

-- The shape of docs/job-spec.schema.json: what a worker needs to run the job (what the Rust
-- JobSpec reads), and ids that are the ones the keys are built from. Checked before anything is
-- read or written, so a refused spec leaves no trace.
local function invalid(why) return { -2, '', 0, 0, why } end
local ID = '^[%w._:@-]+$'
for name, v in pairs({ jobId = id, userId = user, strategyId = strategy }) do
  if #v == 0 or #v > 128 or not string.find(v, ID) then
    return invalid(name .. ': must be 1 to 128 of letters, digits and . _ : @ -')
  end
end
if user == 'system' then return invalid('userId: system is reserved for fleet-wide status') end
local raw = A(4)
local ok, spec = pcall(cjson.decode, raw)
if not ok then return invalid('spec: not valid JSON (' .. tostring(spec) .. ')') end
-- cjson decodes [] and {} to the same empty table; the text's first character tells them apart.
if type(spec) ~= 'table' or not string.find(raw, '^[ \t\r\n]*{') then
  return invalid('spec: must be a JSON object')
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

local tier, limit = tier_of(user)
local current = redis.call('SCARD', K.user_active(user))
local breaker = breaker_fields(user, strategy)
local decided = (A(5) or '') ~= '' and cjson.decode(A(5))
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
redis.call('HSET', jk, 'spec', A(4), 'user', user, 'strategy', strategy, 'status', 'queued',
  'epoch', 0, 'restarts', 0, 'created', NOW)
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
event(id, 'admitted', 'tier ' .. tier, 0, '', user)
return { 1, tier, limit, current + 1, 0 }
