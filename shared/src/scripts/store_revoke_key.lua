-- Revoke a user's API key. A(1) user, A(2) key id. Returns 1 if it existed, 0 otherwise.
local kk = K.apikey(A(2))
if redis.call('HGET', kk, 'user') ~= A(1) then return 0 end
redis.call('DEL', kk)
redis.call('SREM', K.user_keys(A(1)), A(2))
return 1
