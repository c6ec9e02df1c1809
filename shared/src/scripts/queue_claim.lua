-- Claim up to ARGV[1] job ids for node ARGV[2]: each moves atomically from the ready list's
-- tail (oldest) to the head of the node's processing list.
-- KEYS[1] ready list, KEYS[2] the node's processing list, KEYS[3] set of claimer nodes.
redis.call('SADD', KEYS[3], ARGV[2])
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not id then break end
  out[#out + 1] = id
end
return out
