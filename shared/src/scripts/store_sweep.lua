-- The crash sweep, run by whichever orchestrator takes this interval's guard (A(1) ms): leases
-- that expired (at most A(2) of them, oldest first) become crashed jobs and the restart policy
-- decides each, as node losses (not the strategy's fault: no breaker count). Cost grows with
-- the expired leases, not the live ones.
-- Returns false when another orchestrator has the guard, else {crashed, restarting, failed}.
if not redis.call('SET', K.sweep_guard, '1', 'NX', 'PX', tonumber(A(1))) then return false end
-- The event stream's age cap, applied once per sweep rather than at every event.
redis.call('XTRIM', K.events, 'MINID', '~', NOW - C.events_age)
local crashed, restarting, failed = 0, 0, 0
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', NOW, 'LIMIT', 0, tonumber(A(2)))
for _, id in ipairs(expired) do
  redis.call('ZREM', K.leases, id)
  local cur = redis.call('HMGET', K.job(id), 'status', 'node', 'epoch', 'hb')
  if cur[1] == 'running' then
    crashed = crashed + 1
    redis.call('SREM', K.node_jobs(cur[2]), id)
    local silent = NOW - (tonumber(cur[4]) or NOW)
    local reason = 'no heartbeat for ' .. silent .. ' ms from node ' .. cur[2] .. ' (epoch ' .. cur[3] .. ')'
    if after_failure(id, reason, 'lost') == 'restart' then restarting = restarting + 1 else failed = failed + 1 end
  end
end
return { crashed, restarting, failed }
