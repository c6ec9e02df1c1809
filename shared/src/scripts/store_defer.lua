-- Jobs just promoted whose enqueue failed: back to waiting for a restart in A(1) ms.
-- A(2..) job ids. Only jobs still queued are deferred.
for i = 2, NARGS do
  local jk = K.job(A(i))
  if redis.call('HGET', jk, 'status') == 'queued' then
    redis.call('HSET', jk, 'status', 'crashed', 'restart_at', NOW + tonumber(A(1)))
    redis.call('ZADD', K.delayed, NOW + tonumber(A(1)), A(i))
    redis.call('SREM', K.queued, A(i))
  end
end
return 0
