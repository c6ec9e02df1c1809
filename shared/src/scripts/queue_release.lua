-- Give claimed ids (ARGV, in claim order) back to the front of the ready list, so that the
-- first of them is claimed next. Ids not in the node's processing list are skipped.
-- KEYS[1] ready list, KEYS[2] the node's processing list.
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
