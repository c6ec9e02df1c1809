-- Record the end of a run if the caller's epoch is current and the job runs on its node.
-- A final status frees the user's slot and starts the record's retention.
-- KEYS[1] job hash, KEYS[2] heartbeat key, KEYS[3] leases zset, KEYS[4] user's active set,
-- KEYS[5] node's job set.
-- ARGV[1] job id, ARGV[2] epoch, ARGV[3] node id, ARGV[4] status, ARGV[5] error ('' = none),
-- ARGV[6] flattened count ('' = none), ARGV[7] positions JSON, ARGV[8] stats JSON,
-- ARGV[9] retention seconds. Returns 1 if accepted, 0 if fenced off.
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status', 'node')
if cur[1] ~= ARGV[2] or cur[2] ~= 'running' or cur[3] ~= ARGV[3] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'ended', now, 'positions', ARGV[7], 'stats', ARGV[8])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'flattened', ARGV[6]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
if ARGV[4] == 'stopped' or ARGV[4] == 'failed' then
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]))
end
return 1
