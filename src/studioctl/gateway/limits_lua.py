"""The Redis limits' server-side scripts: each call one atomic round trip (see limits_redis).

Keys of one tenant (``P`` = ``studioctl:<namespace>:limits:{<tenant name>}``; the braces keep
both in one cluster slot):

- ``P:slots``, a ZSET: one member per request holding a slot, scored with its lease's expiry
  (ms, Redis time); members whose expiry has passed are purged before every admission.
- ``P:bucket``, a HASH: ``rpm`` and ``tpm`` (the limits the levels were computed for), ``r``
  and ``t`` (the levels), ``at`` (Redis time of the last refill, ms). Absent means both
  buckets full: the key expires when they would be full again, so idle tenants vanish.

Exactness (Lua numbers are IEEE doubles: integers are exact below 2^53 ≈ 9.0·10^15): time is
whole milliseconds from ``TIME`` (≈1.8·10^12 now); one token is ``UNIT`` = 60,000 units, so
a bucket of ``L`` tokens/min gains exactly ``L`` units per ms. The caller clamps limits to
``MAX_LIMIT`` (10^10/min) and token counts to ``MAX_TOKENS`` (10^10), so capacities stay
≤ 6·10^14 and debts ≥ -1.2·10^15. A refill is ``min(level + elapsed·rate, cap)`` computed as
"``elapsed·rate ≥ cap − level`` → cap": when the product is large it may round, but rounding
is monotonic and ``cap − level`` is exact, so the comparison is right, and the sum is only
taken when the product is below ``cap − level`` (exact). Numbers are written back with
``%.0f`` (Lua's default ``%.14g`` would round anything above 10^14).
"""

from __future__ import annotations

__all__ = ["ENTER", "FINISH", "MAX_LIMIT", "MAX_TOKENS", "RENEW", "RESERVE", "UNIT_PER_TOKEN"]

#: Bucket units per token: milliseconds per minute (``limit`` tokens/min gain ``limit``/ms).
UNIT_PER_TOKEN = 60_000
#: Limits above this count as this (10^10 tokens or requests a minute: unlimited in practice).
MAX_LIMIT = 10**10
#: A request's tokens above this count as this (keeps every level exact, see above).
MAX_TOKENS = 10**10

_PRELUDE = """
local UNIT = 60000
local function fmt(x) return string.format('%.0f', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function load(key, rpm, tpm, now)
  local v = redis.call('HMGET', key, 'rpm', 'tpm', 'r', 't', 'at')
  if not v[1] then return {rpm, tpm, rpm * UNIT, tpm * UNIT, now} end
  return {tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4]), tonumber(v[5])}
end
-- A limit changed: more room when it rose (what was used stays used), clipped when it fell.
local function resize(old, new, level)
  if new > old then return level + (new - old) * UNIT end
  if new < old and level > new * UNIT then return new * UNIT end
  return level
end
local function refill(level, rate, elapsed)
  local room = rate * UNIT - level
  if room <= 0 then return level end
  if elapsed * rate >= room then return rate * UNIT end
  return level + elapsed * rate
end
local function bring(b, rpm, tpm, now)
  b[3] = resize(b[1], rpm, b[3])
  b[4] = resize(b[2], tpm, b[4])
  b[1] = rpm
  b[2] = tpm
  local elapsed = now - b[5]
  if elapsed > 0 then
    b[5] = now
    b[3] = refill(b[3], rpm, elapsed)
    b[4] = refill(b[4], tpm, elapsed)
  end
end
local function full_in(level, rate)
  local room = rate * UNIT - level
  if room <= 0 then return 0 end
  return math.ceil(room / rate)
end
local function save(key, b)
  redis.call('HSET', key, 'rpm', fmt(b[1]), 'tpm', fmt(b[2]), 'r', fmt(b[3]),
    't', fmt(b[4]), 'at', fmt(b[5]))
  local ms = math.max(full_in(b[3], b[1]), full_in(b[4], b[2]))
  redis.call('PEXPIRE', key, fmt(ms + 1000))
end
"""

#: KEYS: slots, bucket. ARGV: max_concurrent, rpm, tpm, lease_ms, member, dry ("1": check
#: only), need (TPM tokens to reserve with the slot; "-1": none). Returns {0, 0} admitted
#: (slot, RPM token and TPM taken), {1, 0} concurrency refused, {2, missing units} RPM
#: refused, {3, 0} would be admitted (dry), {4, missing units} TPM refused (the RPM token is
#: spent: a request refused for TPM counts as one, as after a separate RESERVE).
ENTER = (
    _PRELUDE
    + """
local now = now_ms()
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local need = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {1, 0} end
local b = load(KEYS[2], rpm, tpm, now)
bring(b, rpm, tpm, now)
if b[3] < UNIT then return {2, UNIT - b[3]} end
if ARGV[6] == '1' then return {3, 0} end
b[3] = b[3] - UNIT
if need >= 0 then
  local fit = math.min(need, tpm) * UNIT
  if b[4] < fit then
    save(KEYS[2], b)
    return {4, fit - b[4]}
  end
  b[4] = b[4] - need * UNIT
end
save(KEYS[2], b)
redis.call('ZADD', KEYS[1], fmt(now + lease), ARGV[5])
redis.call('PEXPIRE', KEYS[1], fmt(lease + 1000))
return {0, 0}
"""
)

#: KEYS: bucket. ARGV: rpm, tpm, need (tokens). Returns {0, 0} reserved, {1, missing units}.
#: A request needing more than the whole bucket is admitted when the bucket is full.
RESERVE = (
    _PRELUDE
    + """
local now = now_ms()
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local b = load(KEYS[1], rpm, tpm, now)
bring(b, rpm, tpm, now)
local fit = math.min(need, tpm) * UNIT
if b[4] < fit then return {1, fit - b[4]} end
b[4] = b[4] - need * UNIT
save(KEYS[1], b)
return {0, 0}
"""
)

#: KEYS: slots, bucket. ARGV: member ("" none), rpm, tpm, back (tokens given back; negative:
#: a debit). The level may go below zero (a debt); it refills from there.
FINISH = (
    _PRELUDE
    + """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local back = tonumber(ARGV[4])
if back == 0 then return 0 end
local now = now_ms()
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local b = load(KEYS[2], rpm, tpm, now)
bring(b, rpm, tpm, now)
local level = b[4] + back * UNIT
if level > tpm * UNIT then level = tpm * UNIT end
b[4] = level
save(KEYS[2], b)
return 0
"""
)

#: KEYS: slot ZSETs. ARGV: lease_ms, then per key its member count and members. Pushes the
#: leases of live requests forward; ``XX``: a lease already released (or expired and purged)
#: is never brought back. Returns how many leases were renewed.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local expiry = string.format('%.0f', now + lease)
local i = 2
local renewed = 0
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    renewed = renewed + redis.call('ZADD', KEYS[k], 'XX', 'CH', expiry, ARGV[i])
    i = i + 1
  end
  redis.call('PEXPIRE', KEYS[k], string.format('%.0f', lease + 1000))
end
return renewed
"""
