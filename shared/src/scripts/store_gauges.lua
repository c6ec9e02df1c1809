-- Fleet-wide gauges for the orchestrators' /metrics and the status of `system`, in one round
-- trip and read-only: every orchestrator asked reports the same values. Mirrors
-- MemoryStore::fleet_gauges. Returns {queued, running, holding a slot, restarting, failed within
-- the hour, nodes alive, their capacity, their runners, ready jobs, processing jobs, breakers
-- opened ever}; ready and processing are -1 when the queue lives outside Redis (C.ready is '').
-- With A(1) (ms) and A(2) (count) it takes a fleet load sample instead, unless one was taken
-- within A(1) ms (then it returns false at once, reading nothing), keeping the newest A(2)
-- (MemoryStore::sample_history): the only write it makes.
local sample = NARGS >= 2
if sample and not redis.call('SET', K.history_guard, '1', 'NX', 'PX', A(1)) then return false end
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
local queued, active, restarting = redis.call('SCARD', K.queued), redis.call('SCARD', K.active),
  redis.call('ZCARD', K.delayed)
if sample then
  redis.call('LPUSH', K.history, table.concat({ NOW, queued, running, active, restarting, alive,
    capacity }, ','))
  redis.call('LTRIM', K.history, 0, tonumber(A(2)) - 1)
end
return { queued, running, active, restarting,
  redis.call('ZCOUNT', K.failed, NOW - HOUR_MS, '+inf'), alive, capacity, runners, ready, processing,
  tonumber(redis.call('HGET', K.counters, 'breaker_openings')) or 0 }
