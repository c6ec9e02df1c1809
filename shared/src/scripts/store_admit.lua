-- Admit one job (`admit` in lib.lua says how). A(1) job id, A(2) user, A(3) strategy id, A(4)
-- spec JSON, A(5) '' or the breaker decision JSON, A(6) '1' when the spec is runfleet's typed
-- JobSpec (its shape is not checked again; any other client leaves it out).
-- Returns {code, tier, limit, current, retry_after_ms | reason | snapshot} (see `admit`).
return admit(A(1), A(2), A(3), A(4), A(5), A(6))
