-- Claim up to ARGV[1] job ids for node ARGV[2]: each moves atomically from the ready list's
-- tail (oldest) to the head of the node's processing list.
-- A node takes at most its fair share of what waits: the waiting ids divided by the nodes that
-- claim from this queue (at least one), so that idle nodes share a burst (after a node dies or
-- Redis comes back) instead of the first to wake taking everything it has room for.
-- KEYS[1] ready list, KEYS[2] the node's processing list, KEYS[3] set of claimer nodes.
-- Returns {capped, id...}: capped is 1 when the share, not ARGV[1], limited the claim and
-- left ids waiting for the other nodes (an empty or drained list caps nothing: a node that
-- took all there was has no reason to pause).
redis.call('SADD', KEYS[3], ARGV[2])
local waiting = redis.call('LLEN', KEYS[1])
local share = math.ceil(waiting / math.max(redis.call('SCARD', KEYS[3]), 1))
local max = tonumber(ARGV[1])
local out = { (share < max and share < waiting) and 1 or 0 }
for _ = 1, math.min(max, share) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not id then break end
  out[#out + 1] = id
end
return out
