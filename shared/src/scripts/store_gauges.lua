-- Fleet-wide gauges for the orchestrators' /metrics and the status of `system`, in one round
-- trip and read-only: every orchestrator asked reports the same values. Mirrors
-- MemoryStore::fleet_gauges. Returns {queued, running, holding a slot, restarting, failed within
-- the hour, nodes alive, their capacity, their runners, ready jobs, processing jobs, breakers
-- opened ever}; ready and processing are -1 when the queue lives outside Redis (C.ready is '').
local alive, capacity, runners = 0, 0, 0
local nodes = redis.call('ZRANGE', K.nodes, 0, -1)
for _, n in ipairs(nodes) do
  -- A node whose own key lapsed is dead, whatever the `nodes` set still says.
  local info = redis.call('GET', K.node(n))
  if info then
    local ok, node = pcall(cjson.decode, info)
    if ok and type(node) == 'table' then
      alive = alive + 1
      capacity = capacity + (tonumber(node.capacity) or 0)
      runners = runners + (tonumber(node.runners) or 0)
    end
  end
end
local ready, processing = -1, -1
if C.ready ~= '' then
  ready = redis.call('LLEN', C.ready)
  processing = 0
  -- '<prefix>:queue:<name>:ready' -> '<prefix>:queue:<name>:' (keys::Keys::claimers/processing).
  local base = string.sub(C.ready, 1, -6)
  for _, n in ipairs(redis.call('SMEMBERS', base .. 'claimers')) do
    processing = processing + redis.call('LLEN', base .. 'processing:' .. E(n))
  end
end
-- Running: the runners held by nodes with a lease (live, or lapsed and not swept yet).
local running = 0
for _, n in ipairs(redis.call('ZRANGE', K.node_leases, 0, -1)) do
  running = running + redis.call('SCARD', K.node_jobs(n))
end
return { redis.call('SCARD', K.queued), running, redis.call('SCARD', K.active),
  redis.call('ZCARD', K.delayed),
  redis.call('ZCOUNT', K.failed, NOW - HOUR_MS, '+inf'), alive, capacity, runners, ready, processing,
  tonumber(redis.call('HGET', K.counters, 'breaker_openings')) or 0 }
