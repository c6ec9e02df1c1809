-- Admit a job if its user has a free slot under the tier in force (Redis clock); record it as
-- queued and take the slot, all in one step so concurrent starts cannot exceed the limit.
-- KEYS[1] job hash, KEYS[2] user's job index (zset), KEYS[3] user's active set,
-- KEYS[4] user's subscription hash.
-- ARGV[1] job id, ARGV[2] user id, ARGV[3] spec JSON, ARGV[4..7] limits free/basic/pro/enterprise.
-- Returns {admitted (1/0/-1 duplicate), tier, limit, current}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limits = { free = tonumber(ARGV[4]), basic = tonumber(ARGV[5]), pro = tonumber(ARGV[6]),
  enterprise = tonumber(ARGV[7]) }
local sub = redis.call('HMGET', KEYS[4], 'tier', 'expiresAtMs')
local tier = 'free'
if sub[1] and limits[sub[1]] and tonumber(sub[2]) and now < tonumber(sub[2]) then tier = sub[1] end
local limit = limits[tier]
local current = redis.call('SCARD', KEYS[3])
if current >= limit then return { 0, tier, limit, current } end
if redis.call('EXISTS', KEYS[1]) == 1 then return { -1, tier, limit, current } end
redis.call('HSET', KEYS[1], 'spec', ARGV[3], 'user', ARGV[2], 'status', 'queued', 'epoch', 0,
  'restarts', 0, 'created', now)
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return { 1, tier, limit, current + 1 }
