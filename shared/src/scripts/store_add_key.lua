-- Store a new API key's hash for a user. A(1) user, A(2) key id, A(3) SHA-256 hex of the key.
-- Returns the creation time (ms), or -1 if the key id is taken.
local kk = K.apikey(A(2))
if redis.call('EXISTS', kk) == 1 then return -1 end
redis.call('HSET', kk, 'user', A(1), 'hash', A(3), 'created', NOW)
redis.call('SADD', K.user_keys(A(1)), A(2))
return NOW
