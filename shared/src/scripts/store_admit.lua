-- Admit a job: the user's strategy breaker must allow it and the tier in force (Redis clock)
-- must have a free slot; then record it as queued and take the slot, all in one step so that
-- concurrent starts from many orchestrators cannot exceed a limit.
-- A(1) job id, A(2) user, A(3) strategy id, A(4) spec JSON.
-- Returns {code, tier, limit, current, retry_after_ms}: code 1 admitted, 0 limit reached,
-- -1 duplicate id, 2 breaker open, 3 fleet full, 4 queue full.
local id, user, strategy = A(1), A(2), A(3)
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
  redis.call('DEL', bk, bk .. ':failures')
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
return { 1, tier, limit, current + 1, 0 }
