-- Admit many jobs, each on its own and in order, exactly as store_admit.lua admits one: one
-- call instead of one per job, so a batch pays the call's own cost once per chunk (the store
-- sends at most ADMIT_CHUNK jobs per call, so that one call never holds Redis long).
-- Per job 6 arguments from A(1): job id, user, strategy id, spec JSON, '' or the breaker
-- decision JSON, '1' when the spec is runfleet's typed JobSpec.
-- Returns one reply of `admit` per job, in order.
local out = {}
for i = 1, NARGS, 6 do
  out[#out + 1] = admit(A(i), A(i + 1), A(i + 2), A(i + 3), A(i + 4), A(i + 5))
end
return out
