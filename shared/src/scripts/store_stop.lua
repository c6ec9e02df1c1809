-- Stop a job. Not running (queued, crashed): stopped at once, slot freed. Running on the
-- expected node: the stop mode is recorded and a stop command is queued for that node.
-- KEYS[1] job hash, KEYS[2] user's active set, KEYS[3] heartbeat key, KEYS[4] leases zset,
-- KEYS[5] expected node's command list.
-- ARGV[1] job id, ARGV[2] mode, ARGV[3] expected node id ('' if none), ARGV[4] retention s.
-- Returns {'missing'} | {'ended', status} | {'stopped'} | {'sent', node} | {'moved', node}.
local cur = redis.call('HMGET', KEYS[1], 'status', 'node', 'epoch')
local status, node = cur[1], cur[2] or ''
if not status then return { 'missing' } end
if status == 'stopped' or status == 'failed' then return { 'ended', status } end
if status == 'queued' or status == 'crashed' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'status', 'stopped', 'ended', now, 'stop_mode', ARGV[2], 'flattened', 0)
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
  return { 'stopped' }
end
if node ~= ARGV[3] then return { 'moved', node } end
redis.call('HSET', KEYS[1], 'stop_mode', ARGV[2])
redis.call('RPUSH', KEYS[5], cjson.encode({ command = 'stop', jobId = ARGV[1],
  epoch = tonumber(cur[3]), mode = ARGV[2] }))
return { 'sent', node }
