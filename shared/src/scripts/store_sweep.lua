-- The crash sweep's first step, run by whichever orchestrator takes this interval's guard (A(1)
-- ms): of the leases that expired (at most A(2) of them, oldest first), those of running jobs
-- are answered as the policy's snapshots (failure_snapshot), for the store to decide each as a
-- node loss (not the strategy's fault: no breaker count) and apply it with store_fail_lost.lua;
-- leases of jobs no longer running are dropped. Cost grows with the expired leases, not the
-- live ones.
-- Returns false when another orchestrator has the guard, else the snapshots (JSON strings).
if not redis.call('SET', K.sweep_guard, '1', 'NX', 'PX', tonumber(A(1))) then return false end
-- The event stream's age cap, applied once per sweep rather than at every event.
redis.call('XTRIM', K.events, 'MINID', '~', NOW - C.events_age)
local snapshots = {}
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', NOW, 'LIMIT', 0, tonumber(A(2)))
for _, id in ipairs(expired) do
  if redis.call('HGET', K.job(id), 'status') == 'running' then
    snapshots[#snapshots + 1] = failure_snapshot(id)
  else
    redis.call('ZREM', K.leases, id)
  end
end
return snapshots
