-- Restarts that are due (at most A(1)): crashed jobs whose delay has passed become queued again
-- (and, with the Redis-list queue, are pushed in this step) and are returned; with an outside
-- queue the caller publishes them.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.delayed, '-inf', NOW, 'LIMIT', 0, tonumber(A(1)))) do
  redis.call('ZREM', K.delayed, id)
  local jk = K.job(id)
  if redis.call('HGET', jk, 'status') == 'crashed' then
    redis.call('HSET', jk, 'status', 'queued')
    redis.call('HDEL', jk, 'node', 'restart_at')
    redis.call('SADD', K.queued, id)
    to_queue(id)
    event(id, 'restarted', '')
    out[#out + 1] = id
  end
end
return out
