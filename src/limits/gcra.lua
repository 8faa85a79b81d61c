-- GCRA for one key, atomic in Redis, on Redis's own clock: every replica asking agrees,
-- whatever its own clock says. The same algorithm and numbers as governor's (limits/local.rs):
-- a key's state is its theoretical arrival time (TAT); a request at `now` is allowed when
-- now >= TAT - tau, and then TAT becomes max(TAT, now) + t.
--
-- KEYS[1]  the key (prefix, policy id, client IP or user id)
-- ARGV[1]  t: the emission interval, in microseconds
-- ARGV[2]  tau: t * (burst - 1), in microseconds
-- ARGV[3]  n: requests to count, one after the other at this instant (checks of one key that
--          arrived together; the first ones that fit are allowed, the rest refused)
-- Returns {allowed, wait}: how many of the n were allowed, and for the first refused one the
-- wait in microseconds until it would be (0 when all were allowed).

-- TIME is not deterministic: replicate the script's writes, not the script (Redis >= 5 does
-- this by default; older servers need the call).
if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
-- Request j (from 0) is allowed when now >= tat + j * t - tau.
local room = now + tau - tat
local allowed = 0
if room >= 0 then
  allowed = math.min(n, math.floor(room / t) + 1)
end
if allowed > 0 then
  local next_tat = tat + allowed * t
  -- The key expires when its bucket is full again: its state is then the same as none.
  -- '%.0f' writes the whole number (tostring would round it to 14 digits).
  redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX',
    math.max(1, math.ceil((next_tat - now) / 1000)))
end
local wait = 0
if allowed < n then
  wait = tat + allowed * t - tau - now
end
return {allowed, wait}
