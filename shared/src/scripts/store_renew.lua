-- One node's heartbeat: its own liveness and every runner's lease, positions, stats and paper
-- account, in one round trip. A beat whose epoch is stale, or whose job no longer runs on this
-- node, is refused (fencing).
-- A(1) node id, A(2) lease ms, A(3) node info JSON, then per runner 5 values: job id, epoch,
-- positions JSON, stats JSON, account JSON ('' = none). Returns the refused job ids.
local node, lease = A(1), tonumber(A(2))
redis.call('SET', K.node(node), A(3), 'PX', lease)
-- Pending commands live as long as the node (a no-op when there are none).
redis.call('PEXPIRE', K.commands(node), lease)
redis.call('ZADD', K.nodes, NOW, node)
local refused = {}
for a = 4, NARGS, 5 do
  local id, epoch = A(a), A(a + 1)
  local jk = K.job(id)
  local cur = redis.call('HMGET', jk, 'epoch', 'status', 'node')
  if cur[1] == epoch and cur[2] == 'running' and cur[3] == node then
    redis.call('ZADD', K.leases, NOW + lease, id)
    redis.call('HSET', jk, 'hb', NOW, 'positions', A(a + 2), 'stats', A(a + 3))
    if A(a + 4) ~= '' then redis.call('HSET', jk, 'account', A(a + 4)) end
    audit('renew', id, epoch, node)
  else
    if cur[2] then
      event(id, 'fenced', 'heartbeat of epoch ' .. epoch .. ' refused', epoch, node)
    end
    refused[#refused + 1] = id
  end
end
return refused
