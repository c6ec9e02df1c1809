-- Return every unacknowledged claim of node ARGV[1] to the front of the ready list, oldest
-- claim first in line, and forget the node as a claimer.
-- KEYS[1] ready list, KEYS[2] the node's processing list, KEYS[3] set of claimer nodes.
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do
  n = n + 1
end
redis.call('SREM', KEYS[3], ARGV[1])
return n
