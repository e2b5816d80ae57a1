//! The Lua scripts the store runs: each check is one script, so it is atomic on the
//! server (no read-modify-write race between replicas) and one round trip. Time is the
//! server's (`TIME`), so the replicas' clocks do not matter. Times are microseconds.

/// GCRA for a request limit. KEYS[1]: the theoretical arrival time (TAT). ARGV: the
/// emission interval (µs), the burst. Returns `{allowed, remaining, µs}`: when allowed,
/// µs until the limit is back to full; when refused, µs until one request is allowed.
pub const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > tolerance then
  return {0, 0, math.ceil(ahead - tolerance)}
end
redis.call('SET', KEYS[1], string.format('%.0f', now + ahead), 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((tolerance - ahead) / interval), math.ceil(ahead)}
";

/// A token budget that may go into debt, kept GCRA-style as the time its balance is full
/// again. KEYS[1]: that time. ARGV: µs per token, the budget (tokens), tokens to charge
/// (0: only check). Returns `{allowed, remaining, µs}` as [`GCRA`] does; a charge is
/// always taken (usage already happened) and reports the balance after it.
pub const BUDGET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local per_token = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local charge = tonumber(ARGV[3])
local full = tonumber(redis.call('GET', KEYS[1])) or now
if full < now then full = now end
if charge > 0 then
  full = full + charge * per_token
  redis.call('SET', KEYS[1], string.format('%.0f', full), 'PX', math.ceil((full - now) / 1000) + 1)
end
local balance = budget - (full - now) / per_token
if balance > 0 then
  return {1, math.floor(balance), math.ceil(full - now)}
end
return {0, 0, math.ceil((1 - balance) * per_token)}
";

/// Heartbeat. KEYS[1]: this replica's key, KEYS[2]: the set of replica names. ARGV: the
/// name, what it says about itself, its key's lifetime (ms), the replica key prefix.
/// Returns what every replica still alive said and how long its key has left (ms),
/// flattened; names whose key expired leave the set.
pub const HEARTBEAT: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[4] .. name
  local info = redis.call('GET', key)
  if info then
    table.insert(out, info)
    table.insert(out, redis.call('PTTL', key))
  else
    redis.call('SREM', KEYS[2], name)
  end
end
return out
";
