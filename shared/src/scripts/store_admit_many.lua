-- Admit many jobs, each on its own and in order, exactly as store_admit.lua admits one: one
-- call instead of one per job, so a batch pays the call's own cost once per chunk (the store
-- sends at most ADMIT_CHUNK jobs per call, so that one call never holds Redis long).
-- Per job 6 arguments from A(1): job id, user, strategy id, spec JSON, '' or the breaker
-- decision JSON, '1' when the spec is runfleet's typed JobSpec.
-- Returns one reply of `admit` per job, in order. A job whose admission raised an error (a key
-- of another type where its user's should be: data runfleet did not write) is answered
-- {-3, '', 0, 0, error} alone: the batch's other jobs, often other users' single starts
-- gathered into this call (store/coalesce.rs), are decided as if it were not there.
local out = {}
for i = 1, NARGS, 6 do
  local ok, reply = pcall(admit, A(i), A(i + 1), A(i + 2), A(i + 3), A(i + 4), A(i + 5))
  if not ok then
    reply = { -3, '', 0, 0, type(reply) == 'table' and tostring(reply.err) or tostring(reply) }
  end
  out[#out + 1] = reply
end
return out
