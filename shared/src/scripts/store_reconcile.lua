-- Queued jobs whose publish to an outside queue (RabbitMQ) was not confirmed within A(1) ms:
-- their orchestrator died between admission and publish, or the publish failed. At most A(2)
-- of them, oldest first, are returned for the caller to publish again, and wait another A(1) ms
-- for that confirmation. Entries of jobs that are no longer queued are dropped.
local out = {}
local due = redis.call('ZRANGEBYSCORE', K.pending, '-inf', NOW - tonumber(A(1)), 'LIMIT', 0, tonumber(A(2)))
for _, id in ipairs(due) do
  if redis.call('HGET', K.job(id), 'status') == 'queued' then
    redis.call('ZADD', K.pending, NOW, id)
    out[#out + 1] = id
  else
    redis.call('ZREM', K.pending, id)
  end
end
return out
