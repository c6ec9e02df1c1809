-- A node hands a running job back (shutdown): it becomes queued again, keeps its user's slot,
-- and its lease ends. The caller enqueues it next. Fenced by epoch and node.
-- KEYS[1] job hash, KEYS[2] heartbeat key, KEYS[3] leases zset, KEYS[4] node's job set.
-- ARGV[1] job id, ARGV[2] epoch, ARGV[3] node id. Returns 1 if accepted, 0 if fenced off.
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'status', 'node')
if cur[1] ~= ARGV[2] or cur[2] ~= 'running' or cur[3] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'node')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
