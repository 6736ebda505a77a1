"""The Lua scripts that decide and settle limits atomically in Redis.

Algorithm: a sliding-window log. Each window limit has a sorted set whose
members are ``<reservation id>|<amount>`` scored by admission time in
milliseconds, plus a string with the sum of the amounts in the set, so that
a check costs O(log n) plus the entries that expired since the last check.
This is exact (a limit of N admits exactly N in any window of its length)
at a memory cost of about 60 to 100 bytes per admitted call and limit,
kept for one window. Concurrency limits have a sorted set of reservation
ids scored by the expiry of their lease.

Time comes from the Redis ``TIME`` command, so replicas with skewed clocks
agree. Every key a script touches is passed in KEYS and shares the
gateway's hash tag, so the scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

from services.policy.rule_version import guard_lua

# KEYS[1]: the reservation record (a hash), KEYS[2]: the gateway's rules
# version; then per limit two keys (log and sum) for a window limit or one key
# (the lease set) for a concurrency limit.
# ARGV: reservation id, lease ms, dry ("1": report without consuming),
# record ttl ms (0: write no record), record metadata (stored with the
# reserved amounts for Settle), limit count, then five values per
# limit: type ("w" window or "c" concurrent), limit, window ms, amount,
# capped ("1": reserve at most what is left); last the rules version the
# limits were chosen with ("" to skip the check).
# Returns {1, used_1, reset_ms_1, amount_1, ...} on admission,
# {0, index of the denying limit, retry after ms, used} on denial, or
# {9, version} without any change when the rules changed (see rule_version).
CHECK = (
    guard_lua(2)
    + r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local dry = ARGV[3] == '1'
local record_ttl = tonumber(ARGV[4])
local meta = ARGV[5]
local n = tonumber(ARGV[6])

local kinds, limits, windows, amounts, currents, keys = {}, {}, {}, {}, {}, {}
local ki = 3
for i = 1, n do
  local base = 6 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3])
  local amount = tonumber(ARGV[base + 4])
  local capped = ARGV[base + 5] == '1'
  local current
  if kind == 'w' then
    local log, sum = KEYS[ki], KEYS[ki + 1]
    keys[i] = {log, sum}
    ki = ki + 2
    local cutoff = now - window
    local expired = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
    current = tonumber(redis.call('GET', sum) or '0')
    if #expired > 0 then
      local freed = 0
      for _, member in ipairs(expired) do
        freed = freed + tonumber(string.match(member, '|(%d+)$'))
      end
      redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
      current = current - freed
      if current < 0 or redis.call('ZCARD', log) == 0 then current = 0 end
      redis.call('SET', sum, current, 'KEEPTTL')
    end
  else
    local set = KEYS[ki]
    keys[i] = {set}
    ki = ki + 1
    redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
    current = redis.call('ZCARD', set)
  end
  if capped then amount = math.min(amount, limit - current) end
  if not dry and (current + amount > limit or current >= limit) then
    local retry = 1000
    if kind == 'w' then
      local need = current + math.max(amount, 1) - limit
      local entries = redis.call('ZRANGE', keys[i][1], 0, -1, 'WITHSCORES')
      local freed = 0
      retry = window
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], '|(%d+)$'))
        if freed >= need then
          retry = tonumber(entries[j + 1]) + window - now
          break
        end
      end
    end
    return {0, i, math.max(retry, 1), current}
  end
  kinds[i], limits[i], windows[i] = kind, limit, window
  amounts[i], currents[i] = amount, current
end

local result = {1}
for i = 1, n do
  local kind, window, amount = kinds[i], windows[i], amounts[i]
  local reset = 0
  if kind == 'w' then
    local log, sum = keys[i][1], keys[i][2]
    if not dry and amount > 0 then
      redis.call('ZADD', log, now, rid .. '|' .. amount)
      redis.call('INCRBY', sum, amount)
      redis.call('PEXPIRE', log, window + 1000)
      redis.call('PEXPIRE', sum, window + 1000)
    end
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    reset = window
    if #oldest > 0 then reset = tonumber(oldest[2]) + window - now end
  elseif not dry then
    local set = keys[i][1]
    redis.call('ZADD', set, now + lease_ms, rid)
    redis.call('PEXPIRE', set, lease_ms + 1000)
  end
  local used = currents[i]
  if not dry then used = used + amount end
  result[#result + 1] = used
  result[#result + 1] = reset
  result[#result + 1] = amount
end

if not dry and record_ttl > 0 then
  redis.call('HSET', KEYS[1], 'at', now, 'meta', meta)
  for i = 1, n do redis.call('HSET', KEYS[1], 'a' .. i, amounts[i]) end
  redis.call('PEXPIRE', KEYS[1], record_ttl)
end
return result
"""
)

# KEYS[1]: the reservation record, then the keys of each limit as in CHECK.
# ARGV: reservation id, the record's metadata as Check stored it, limit
# count, then per limit: type, the record field of its reserved amount,
# settled amount, window ms. Replaces each reservation with the settled
# amount (kept at its admission time while that is inside the window, else
# counted now) and releases concurrency slots. Returns 0 when the
# reservation was settled before or has expired, 2 without any change when
# the record's metadata differs from ARGV[2] (the keys passed are not the
# record's), else 1.
SETTLE = r"""
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return 0 end
if meta ~= ARGV[2] then return 2 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local n = tonumber(ARGV[3])
local reserved_of = {}
for i = 1, n do
  local field = ARGV[3 + (i - 1) * 4 + 2]
  reserved_of[i] = tonumber(redis.call('HGET', KEYS[1], field) or '0')
end
redis.call('DEL', KEYS[1])
local ki = 2
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local reserved = reserved_of[i]
  local settled = tonumber(ARGV[base + 3])
  local window = tonumber(ARGV[base + 4])
  if kind == 'w' then
    local log, sum = KEYS[ki], KEYS[ki + 1]
    ki = ki + 2
    local old = rid .. '|' .. reserved
    local score = redis.call('ZSCORE', log, old)
    if score then
      redis.call('ZREM', log, old)
      redis.call('DECRBY', sum, reserved)
    end
    if settled > 0 then
      local at = now
      if score and tonumber(score) > now - window then at = tonumber(score) end
      redis.call('ZADD', log, at, rid .. '|' .. settled)
      redis.call('INCRBY', sum, settled)
      redis.call('PEXPIRE', log, window + 1000)
      redis.call('PEXPIRE', sum, window + 1000)
    end
  else
    redis.call('ZREM', KEYS[ki], rid)
    ki = ki + 1
  end
end
return 1
"""

# KEYS[1]: the runtime limits hash, KEYS[2]: the loop-guard overrides hash,
# KEYS[3]: the rules version. ARGV: user id, most fields to cache.
# Returns {version, cacheable ("1": every override is there and neither hash
# is too large to keep), limit field count, limit fields and values...,
# override fields and values...}; when not cacheable only the user's
# override (if any) follows the limits.
READ_LIMIT_RULES = r"""
local version = redis.call('GET', KEYS[3]) or '0'
local max_fields = tonumber(ARGV[2])
local limits = redis.call('HGETALL', KEYS[1])
local cacheable = '1'
local guards = {}
if redis.call('HLEN', KEYS[2]) <= max_fields then
  guards = redis.call('HGETALL', KEYS[2])
else
  cacheable = '0'
  local guard = redis.call('HGET', KEYS[2], ARGV[1])
  if guard then guards = {ARGV[1], guard} end
end
if #limits / 2 > max_fields then cacheable = '0' end
local out = {version, cacheable, #limits / 2}
for _, v in ipairs(limits) do out[#out + 1] = v end
for _, v in ipairs(guards) do out[#out + 1] = v end
return out
"""
