-- One node's heartbeat: its own liveness and lease, which is every one of its runners' lease,
-- and the reports of the runners whose report changed since the last accepted beat: one round
-- trip whose cost grows with the changes, not with the runners. A node whose lease lapsed or
-- that a sweep fenced is refused whole (its runners may run elsewhere already); a reported
-- runner whose epoch is stale, or that no longer runs on this node, is refused (fencing).
-- A(1) node id, A(2) lease ms, A(3) node info JSON, A(4) runners it holds, then per changed
-- runner 5 values: job id, epoch, positions JSON, stats JSON, account JSON ('' = unchanged).
-- Returns false when the node is refused whole, else the refused job ids.
local node, lease, holds = A(1), tonumber(A(2)), tonumber(A(4))
local may_hold, lease_ends = node_may_hold(node)
-- A node that holds runners but has no lease lost it to a sweep long ago (its record is gone):
-- refused whole. One holding none starts its lease here.
if not may_hold or (holds > 0 and not lease_ends) then return false end
redis.call('SET', K.node(node), A(3), 'PX', lease)
redis.call('ZADD', K.nodes, NOW, node)
extend_node_lease(node, lease)
local refused = {}
for a = 5, NARGS, 5 do
  local id, epoch = A(a), A(a + 1)
  local jk = K.job(id)
  local cur = redis.call('HMGET', jk, 'epoch', 'status', 'node')
  if cur[1] == epoch and cur[2] == 'running' and cur[3] == node then
    local fields = { 'hb', NOW }
    for i, name in ipairs({ 'positions', 'stats', 'account' }) do
      if A(a + 1 + i) ~= '' then
        fields[#fields + 1] = name
        fields[#fields + 1] = A(a + 1 + i)
      end
    end
    redis.call('HSET', jk, unpack(fields))
    if A(a + 3) ~= '' then pnl_point(id, A(a + 3)) end
    audit('renew', id, epoch, node)
  else
    if cur[2] then
      event(id, 'fenced', 'heartbeat of epoch ' .. epoch .. ' refused', epoch, node)
    end
    refused[#refused + 1] = id
  end
end
return refused
