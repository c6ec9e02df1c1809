-- Record node A(1)'s claim of each job A(3..): bump the epoch (fencing token), mark it running
-- on the node, and start or extend the node's lease to A(2) ms (a runner's lease is its
-- node's). A job that is not queued (nor running under a lapsed lease) is dropped: stopped
-- while queued, a duplicate delivery, or unknown. A claim is also the delivery an outside
-- queue's `pending` entry waited for. A node whose lease lapsed, or that a sweep fenced,
-- claims nothing: every job is answered 'fenced' and stays where it is.
-- Returns per job {id, 'claimed', epoch, spec, account, ms since its admission} or {id, reason}.
local node, lease = A(1), tonumber(A(2))
local out = {}
if not node_may_hold(node) then
  for i = 3, NARGS do out[#out + 1] = { A(i), 'fenced' } end
  return out
end
if NARGS >= 3 then extend_node_lease(node, lease) end
for i = 3, NARGS do
  local id = A(i)
  local jk = K.job(id)
  local cur = redis.call('HMGET', jk, 'status', 'spec', 'account', 'created', 'user')
  local status = cur[1]
  if not status then
    out[#out + 1] = { id, 'unknown' }
  elseif status == 'queued' or (status == 'running' and lease_lapsed(id)) then
    local epoch = redis.call('HINCRBY', jk, 'epoch', 1)
    redis.call('HSET', jk, 'status', 'running', 'node', node, 'started', NOW, 'hb', NOW)
    redis.call('HDEL', jk, 'ended', 'stop_mode', 'flattened', 'restart_at')
    redis.call('SADD', K.node_jobs(node), id)
    redis.call('SREM', K.queued, id)
    redis.call('ZREM', K.pending, id)
    audit('claim', id, epoch, node)
    event(id, 'claimed', '', epoch, node, cur[5] or '')
    out[#out + 1] = { id, 'claimed', epoch, cur[2], cur[3] or '', tostring(NOW - (tonumber(cur[4]) or NOW)) }
  else
    out[#out + 1] = { id, status }
  end
end
return out
