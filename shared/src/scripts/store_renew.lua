-- One node's heartbeat: renew its own liveness and every runner's lease, store positions and
-- stats, in one round trip. A beat whose epoch is stale, or whose job is no longer running on
-- this node, is refused (fencing).
-- KEYS[1] leases zset, KEYS[2] node key, KEYS[3] nodes zset, then per runner i:
-- KEYS[3+2i-1] job hash, KEYS[3+2i] heartbeat key.
-- ARGV[1] node id, ARGV[2] lease ms, ARGV[3] node info JSON, then per runner 4 values:
-- job id, epoch, positions JSON, stats JSON. Returns the refused job ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', lease)
redis.call('ZADD', KEYS[3], now, ARGV[1])
local refused = {}
local n = (#ARGV - 3) / 4
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local id, epoch = ARGV[a + 1], ARGV[a + 2]
  local jk, hk = KEYS[3 + 2 * i - 1], KEYS[3 + 2 * i]
  local cur = redis.call('HMGET', jk, 'epoch', 'status', 'node')
  if cur[1] == epoch and cur[2] == 'running' and cur[3] == ARGV[1] then
    redis.call('SET', hk, epoch, 'PX', lease)
    redis.call('ZADD', KEYS[1], now + lease, id)
    redis.call('HSET', jk, 'hb', now, 'positions', ARGV[a + 3], 'stats', ARGV[a + 4])
  else
    refused[#refused + 1] = id
  end
end
return refused
