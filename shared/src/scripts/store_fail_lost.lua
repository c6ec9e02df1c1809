-- The crash sweep's second step: apply the policy's decision on a run whose lease expired (its
-- node died, hung or lost Redis), if the lease is still lapsed and the job and its breaker are
-- as the decision was made on (failure_current). A(1) the decision JSON
-- (policy::FailureDecision).
-- Returns 'restart', 'failed', or 'stale' (nothing written; the next sweep looks again).
local d = cjson.decode(A(1))
if not lease_lapsed(d.job) then return 'stale' end
local current, user, strategy = failure_current(d)
if not current then return 'stale' end
local node = redis.call('HGET', K.job(d.job), 'node')
if node then redis.call('SREM', K.node_jobs(node), d.job) end
return apply_failure(d, user, strategy)
