-- Stop a job. Not running (queued, or crashed and waiting for a restart): stopped at once, slot
-- freed. Running: the stop mode is recorded and a stop command queued for its node.
-- A(1) job id, A(2) mode.
-- Returns {'missing'} | {'ended', status} | {'stopped'} | {'sent', node}.
local id, mode = A(1), A(2)
local jk = K.job(id)
local cur = redis.call('HMGET', jk, 'status', 'node', 'epoch', 'user')
local status = cur[1]
if not status then return { 'missing' } end
if status == 'stopped' or status == 'failed' then return { 'ended', status } end
if status == 'queued' or status == 'crashed' then
  end_job(id, cur[4], 'stopped', { 'stop_mode', mode, 'flattened', 0 })
  return { 'stopped' }
end
redis.call('HSET', jk, 'stop_mode', mode)
event(id, 'stop_requested', mode)
local ck = K.commands(cur[2])
redis.call('RPUSH', ck, cjson.encode({ command = 'stop', jobId = id,
  epoch = tonumber(cur[3]), mode = mode }))
-- The list lives as long as its node: until the node's lease lapses; each claim and heartbeat
-- extends it (extend_node_lease). A dead node's commands go with it instead of lingering.
local lease_left = (node_lease(cur[2]) or NOW) - NOW
local ttl = math.max(redis.call('PTTL', K.node(cur[2])), lease_left, redis.call('PTTL', ck), 1)
redis.call('PEXPIRE', ck, ttl)
announce('command ' .. cur[2])
return { 'sent', cur[2] }
