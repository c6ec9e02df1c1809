-- A node hands a running job back (shutdown): it becomes queued again, keeps its user's slot,
-- and its lease ends; not a crash. It is queued in this step (Redis-list queue) or the caller
-- publishes it next (outside queue). Fenced by epoch and node.
-- A(1) job id, A(2) epoch, A(3) node id, A(4) account JSON ('' none). Returns 1 or 0 (fenced).
local id, epoch, node = A(1), A(2), A(3)
local jk = K.job(id)
local cur = redis.call('HMGET', jk, 'epoch', 'status', 'node')
if cur[1] ~= epoch or cur[2] ~= 'running' or cur[3] ~= node then return 0 end
audit('hand_back', id, epoch, node)
event(id, 'handed_back', 'its node shut down')
redis.call('HSET', jk, 'status', 'queued')
redis.call('SADD', K.queued, id)
if A(4) ~= '' then redis.call('HSET', jk, 'account', A(4)) end
redis.call('HDEL', jk, 'node')
redis.call('SREM', K.node_jobs(node), id)
to_queue(id)
return 1
