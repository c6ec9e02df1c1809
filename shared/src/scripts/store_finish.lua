-- Record the end of a run, if the caller's epoch is current and the job runs on its node.
-- stopped/failed end the job; crashed (the runner panicked or erred) goes through the restart
-- policy at once, as a swept crash would: called without a decision, the script answers the
-- policy's snapshot (failure_snapshot) and writes nothing; the store decides
-- (policy::decide_failure) and calls again with the decision, applied only if still current.
-- A(1) job id, A(2) epoch, A(3) node id, A(4) status, A(5) error ('' none), A(6) flattened
-- count ('' none), A(7) positions JSON, A(8) stats JSON, A(9) account JSON ('' none), A(10)
-- for a crashed run, the decision JSON (policy::FailureDecision; '' none yet).
-- Returns 0 if fenced off, 1 (ended), 2 (restart scheduled), 3 (failed by the policy), or the
-- snapshot JSON (a string) when a crashed run needs a (new) decision.
local id, epoch, node, status = A(1), A(2), A(3), A(4)
local jk = K.job(id)
local cur = redis.call('HMGET', jk, 'epoch', 'status', 'node', 'user')
if cur[1] ~= epoch or cur[2] ~= 'running' or cur[3] ~= node then return 0 end
local decision, user, strategy
if status == 'crashed' then
  local d = (A(10) or '') ~= '' and cjson.decode(A(10))
  local current = false
  if d then current, user, strategy = failure_current(d) end
  if not current then return failure_snapshot(id) end
  decision = d
end
audit('finish', id, epoch, node)
redis.call('HSET', jk, 'positions', A(7), 'stats', A(8))
pnl_point(id, A(8))
if A(9) ~= '' then redis.call('HSET', jk, 'account', A(9)) end
redis.call('SREM', K.node_jobs(node), id)
if decision then
  return apply_failure(decision, user, strategy) == 'restart' and 2 or 3
end
local fields = {}
if A(5) ~= '' then fields[#fields + 1] = 'error'; fields[#fields + 1] = A(5) end
if A(6) ~= '' then fields[#fields + 1] = 'flattened'; fields[#fields + 1] = A(6) end
end_job(id, cur[4], status, fields)
return 1
