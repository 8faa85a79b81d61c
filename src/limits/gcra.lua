-- GCRA for one key, atomic in Redis, on Redis's own clock: every replica asking agrees,
-- whatever its own clock says. The same algorithm and numbers as governor's (limits/local.rs):
-- a key's state is its theoretical arrival time (TAT); a request at `now` is allowed when
-- now >= TAT - tau, and then TAT becomes max(TAT, now) + t.
--
-- KEYS[1]  the key (prefix, policy id, client IP or user id)
-- ARGV[1]  t: the emission interval, in microseconds
-- ARGV[2]  tau: t * (burst - 1), in microseconds
-- Returns {1, 0} when allowed, {0, wait} when not, wait in microseconds until it would be.

-- TIME is not deterministic: replicate the script's writes, not the script (Redis >= 5 does
-- this by default; older servers need the call).
if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
local earliest = tat - tau
if now < earliest then
  return {0, earliest - now}
end
if tat < now then
  tat = now
end
local next_tat = tat + t
-- The key expires when its bucket is full again: its state is then the same as none.
-- '%.0f' writes the whole number (tostring would round it to 14 digits).
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX',
  math.max(1, math.ceil((next_tat - now) / 1000)))
return {1, 0}
