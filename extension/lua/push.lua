-- push.lua: aggr's bounded push, and its depth (a push of nothing).
-- The queue's depth in events is its length plus, for each of aggr's
-- envelopes in it, the events it holds beyond one (the extra count).  Only
-- this script adds to the registry of envelopes and to the extra count, so an
-- element another producer pushes is always one element: one event, stored
-- or dead-lettered.
--
-- KEYS: queue, registry (hash: envelope id -> its events), extra count
-- ARGV: bound (events, 0 = none), events (what the elements hold),
--       envelopes (how many id/count pairs follow), the pairs, the elements
-- Returns {'queued', 0|1, 'depth', depth after the push or, if refused, now}.
local queue, registry, extra_key = KEYS[1], KEYS[2], KEYS[3]
local bound = tonumber(ARGV[1])
local events = tonumber(ARGV[2])
local envelopes = tonumber(ARGV[3])
local first_element = 4 + 2 * envelopes

-- every read that can fail comes before the first write (RPUSH), so a
-- failing push queues nothing
local extra = redis.call('GET', extra_key)
if extra and not string.match(extra, '^%-?%d+$') then
  return redis.error_reply('ERR ' .. extra_key .. ' does not hold an integer')
end
redis.call('HLEN', registry)
local depth = redis.call('LLEN', queue) + (tonumber(extra) or 0)
if #ARGV < first_element then
  return {'queued', 0, 'depth', depth}
end
if bound > 0 and depth + events > bound then
  return {'queued', 0, 'depth', depth}
end

-- unpack() in chunks: Lua's C stack holds about 8000 values
for i = first_element, #ARGV, 1000 do
  redis.call('RPUSH', queue, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local extra = 0
for i = 4, first_element - 1, 2 do
  redis.call('HSET', registry, ARGV[i], ARGV[i + 1])
  extra = extra + tonumber(ARGV[i + 1]) - 1
end
if extra > 0 then
  redis.call('INCRBY', extra_key, extra)
end
return {'queued', 1, 'depth', depth + events}
