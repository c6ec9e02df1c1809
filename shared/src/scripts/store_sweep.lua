-- The crash sweep's first step, run by whichever orchestrator takes this interval's guard (A(1)
-- ms): the runners of nodes whose lease lapsed (at most A(2) runners, the longest lapsed nodes
-- first) are answered as the policy's snapshots (failure_snapshot), for the store to decide
-- each as a node loss (not the strategy's fault: no breaker count) and apply it with
-- store_fail_lost.lua. A lapsed node left with no runner is fenced for good (it may never claim
-- or renew again under that id) and forgotten. Cost grows with the lapsed nodes' runners, not
-- with the live ones.
-- Returns false when another orchestrator has the guard, else the snapshots (JSON strings).
if not redis.call('SET', K.sweep_guard, '1', 'NX', 'PX', tonumber(A(1))) then return false end
-- The event stream's age cap, applied once per sweep rather than at every event.
redis.call('XTRIM', K.events, 'MINID', '~', NOW - C.events_age)
local budget = tonumber(A(2))
local snapshots = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', K.node_leases, '-inf', NOW)) do
  local nk = K.node_jobs(node)
  local left = 0
  for _, id in ipairs(redis.call('SMEMBERS', nk)) do
    local cur = redis.call('HMGET', K.job(id), 'status', 'node')
    if cur[1] ~= 'running' or cur[2] ~= node then
      redis.call('SREM', nk, id)
    elseif #snapshots < budget then
      snapshots[#snapshots + 1] = failure_snapshot(id)
      left = left + 1
    else
      left = left + 1
    end
  end
  if left == 0 then
    -- A day is far longer than any node lives without a heartbeat: by then its own lease
    -- watchdog stopped its runners long ago.
    redis.call('SET', K.node_fenced(node), '1', 'PX', 86400000)
    redis.call('ZREM', K.node_leases, node)
  end
  if #snapshots >= budget then break end
end
return snapshots
