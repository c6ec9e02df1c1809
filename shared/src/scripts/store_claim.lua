-- Record node A(1)'s claim of each job A(3..): bump the epoch (fencing token), mark it running
-- on the node, and start or extend the node's lease to A(2) ms (a runner's lease is its
-- node's). A job that is not queued (nor running under a lapsed lease) is dropped: stopped
-- while queued, a duplicate delivery, or unknown. A claim is also the delivery an outside
-- queue's `pending` entry waited for. A node whose lease lapsed, or that a sweep fenced,
-- claims nothing: every job is answered 'fenced' and stays where it is.
-- Returns per job {id, 'claimed', epoch, spec, account, ms since its admission} or {id, reason}.
--
-- Taking from the ready list (A(3) = '', which no job id is; A(4) how many at most; A(5) the
-- queue's set of claiming nodes, keys::Keys::claimers): when the
-- scripts queue jobs themselves (C.ready), the claim takes the ids from the ready list's tail
-- (oldest) in the same step that records them, so a claimed job is never between the queue
-- and the store, and no processing list nor ack is needed. A node takes at most its fair
-- share of what waits, as queue_claim.lua gives it (the waiting ids divided by the nodes that
-- claim from this queue). Returns {capped, rows...}: capped is 1 when the share left ids
-- waiting for the other nodes, -1 (and no rows) when the node is fenced.
local node, lease = A(1), tonumber(A(2))
local take = NARGS == 5 and A(3) == ''
local ids = {}
local out = {}
if not node_may_hold(node) then
  if take then return { -1 } end
  for i = 3, NARGS do out[#out + 1] = { A(i), 'fenced' } end
  return out
end
if take then
  local claimers = A(5)
  redis.call('SADD', claimers, node)
  local waiting = redis.call('LLEN', C.ready)
  local share = math.ceil(waiting / math.max(redis.call('SCARD', claimers), 1))
  local max = tonumber(A(4))
  out[1] = (share < max and share < waiting) and 1 or 0
  local n = math.min(max, share)
  if n > 0 then ids = redis.call('RPOP', C.ready, n) or {} end
else
  for i = 3, NARGS do ids[#ids + 1] = A(i) end
end
if #ids > 0 then extend_node_lease(node, lease) end
for _, id in ipairs(ids) do
  local jk = K.job(id)
  local cur = redis.call('HMGET', jk, 'status', 'spec', 'account', 'created', 'user', 'epoch',
    'claimed_event')
  local status = cur[1]
  if not status then
    out[#out + 1] = { id, 'unknown' }
  elseif status == 'queued' or (status == 'running' and lease_lapsed(id)) then
    -- The previous claim still on the record (a run whose lease lapsed with no later event)
    -- goes to the history list before this one takes its place.
    if cur[7] then history_push(id, redis.call('HMGET', jk, unpack(EVENT_FIELDS))) end
    local epoch = (tonumber(cur[6]) or 0) + 1
    local user = cur[5] or ''
    -- The claimed event: in the fleet's stream; the job's history reads it from the record
    -- (claimed_event, epoch, node, started) until the job's next event (history_push).
    local ev = stream_event(id, 'claimed', '', epoch, node, user)
    redis.call('HSET', jk, 'status', 'running', 'epoch', epoch, 'node', node, 'started', NOW,
      'hb', NOW, 'claimed_event', ev)
    redis.call('HDEL', jk, 'ended', 'stop_mode', 'flattened', 'restart_at')
    redis.call('SADD', K.node_jobs(node), id)
    redis.call('SREM', K.queued, id)
    -- Only an outside queue's publishes wait in `pending` (to_queue).
    if C.ready == '' then redis.call('ZREM', K.pending, id) end
    audit('claim', id, epoch, node)
    out[#out + 1] = { id, 'claimed', epoch, cur[2], cur[3] or '', tostring(NOW - (tonumber(cur[4]) or NOW)) }
  else
    out[#out + 1] = { id, status }
  end
end
return out
