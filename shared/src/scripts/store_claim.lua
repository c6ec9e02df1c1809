-- Record node ARGV[1]'s claim of each job: bump the epoch (fencing token), mark it running,
-- start its lease. A job that is not queued (or running under an expired lease) is dropped.
-- KEYS[1] leases zset, KEYS[2] node's job set, then per job i: KEYS[2+2i-1] job hash,
-- KEYS[2+2i] heartbeat key. ARGV[1] node id, ARGV[2] lease ms, ARGV[2+i] job id.
-- Returns per job {id, 'claimed', epoch, spec} or {id, reason}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local jk, hk = KEYS[2 * (i - 2) + 1], KEYS[2 * (i - 2) + 2]
  local cur = redis.call('HMGET', jk, 'status', 'spec')
  local status = cur[1]
  if not status then
    out[#out + 1] = { id, 'unknown' }
  elseif status == 'queued' or (status == 'running' and redis.call('EXISTS', hk) == 0) then
    local epoch = redis.call('HINCRBY', jk, 'epoch', 1)
    redis.call('HSET', jk, 'status', 'running', 'node', ARGV[1], 'started', now, 'hb', now)
    redis.call('HDEL', jk, 'ended', 'error', 'stop_mode', 'flattened')
    redis.call('SET', hk, epoch, 'PX', lease)
    redis.call('ZADD', KEYS[1], now + lease, id)
    redis.call('SADD', KEYS[2], id)
    out[#out + 1] = { id, 'claimed', epoch, cur[2] }
  else
    out[#out + 1] = { id, status }
  end
end
return out
