-- Undo an admission whose enqueue failed: delete the job and give its slot back, but only if no
-- node has claimed it meanwhile (a publish the broker took after all). A(1) job id, A(2) user.
-- Returns 1 if forgotten, 0 if it had been claimed and is left alone.
local id, user = A(1), A(2)
local jk = K.job(id)
local cur = redis.call('HMGET', jk, 'status', 'epoch')
if cur[1] and (cur[1] ~= 'queued' or cur[2] ~= '0') then return 0 end
redis.call('DEL', jk)
redis.call('SREM', K.user_active(user), id)
redis.call('SREM', K.active, id)
redis.call('SREM', K.queued, id)
redis.call('ZREM', K.pending, id)
redis.call('ZREM', K.user_jobs(user), id)
return 1
