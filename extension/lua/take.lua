-- take.lua: a consumer's acknowledge-and-take, in one atomic step.
--
-- KEYS: queue, registry (hash: envelope id -> events), extra count,
--       the slot's processing list, the slot's batch hash,
--       the slot's token key of aggr 0.2 (read once, then deleted)
-- ARGV: a fresh token, most events, most bytes, move ('1' = take from the
--       queue), the token to acknowledge first ('' = none), head bytes, the
--       token whose last attempt failed for a transient reason ('' = none,
--       '*' = the slot's batch, whatever its token: the last answer was
--       lost), the largest element a batch of one may be
--
-- The batch hash names what the processing list holds: token, attempts (how
-- often it was handed out, not counting attempts the consumer saw fail for a
-- transient reason), and for each of aggr's envelopes in it
-- 'envelope:<id>' = its events.  An element of another producer too large
-- for any batch is not moved: it leaves the queue and the hash keeps
-- 'oversize' (its size) and 'head' (its first bytes), which the consumer
-- dead-letters.
--
-- Acknowledging deletes the list and the hash, if the hash still has that
-- token.  A list with a token may be committed already: it is replayed as it
-- is.  Elements are moved only into an empty list.  Moving is SORT ... BY
-- nosort LIMIT ... STORE, which copies a range of the queue in C; while the
-- registry is empty (no envelope of aggr waits), no element passes through
-- Lua.  A batch holds at most 'most events' events and measures at most
-- 'most bytes' (MEMORY USAGE, allocator rounding included), except that an
-- element larger than that is a batch of its own, up to 'largest' (a quarter
-- more for rounding, plus 4 kB): a lowered aggr.batch_bytes never cuts what
-- aggr accepted under the old one.  The batch grows from the head by doubling, so a
-- take copies what it keeps plus the doubling step that did not fit (Redis
-- cannot measure an element without copying it).  While envelopes wait,
-- each doubling step's elements are read to count their events, and the
-- doubling stops at the elements that hold 'most events'.
--
-- Every read that can fail (a key of the wrong type, a command the ACL does
-- not allow) comes before the first write, so a failing take changes
-- nothing; the first write is a DEL, which Redis allows at maxmemory, so
-- consumers can drain a full Redis (later writes are then allowed too).
-- Returns {'acknowledged', 0|1, 'fresh', 0|1, 'batch', HGETALL of the hash};
-- fresh = 1 when the token was set just now, so the batch cannot have been
-- committed.  The caller reads the list with an LRANGE sent right behind.
local queue, registry, extra_key = KEYS[1], KEYS[2], KEYS[3]
local processing, batch, old_token_key = KEYS[4], KEYS[5], KEYS[6]
local fresh_token = ARGV[1]
local most_events = tonumber(ARGV[2])
local most_bytes = tonumber(ARGV[3])
local move = ARGV[4] == '1'
local ack_token = ARGV[5]
local head_bytes = tonumber(ARGV[6])
local transient_token = ARGV[7]
local largest = tonumber(ARGV[8])

-- reads
local waiting = redis.call('LLEN', queue)
local registered = redis.call('HLEN', registry)
local extra = redis.call('GET', extra_key)
if extra and not string.match(extra, '^%-?%d+$') then
  return redis.error_reply('ERR ' .. extra_key .. ' does not hold an integer')
end
local have = redis.call('LLEN', processing)
local token = redis.call('HGET', batch, 'token')
local attempts = tonumber(redis.call('HGET', batch, 'attempts')) or 1
local old_token = redis.call('GET', old_token_key)
redis.call('MEMORY', 'USAGE', processing, 'SAMPLES', 0)

-- writes
redis.call('DEL', old_token_key)
local acknowledged = 0
if ack_token ~= '' and token == ack_token then
  redis.call('DEL', processing, batch)
  acknowledged = 1
  have, token = 0, false
end

local function answer(fresh)
  return {'acknowledged', acknowledged, 'fresh', fresh, 'batch', redis.call('HGETALL', batch)}
end

-- a batch taken by aggr 0.2 keeps its token
if old_token and not token then
  redis.call('HSET', batch, 'token', old_token)
  token = old_token
end
if token and (have > 0 or redis.call('HEXISTS', batch, 'oversize') == 1) then
  if token ~= transient_token and transient_token ~= '*' then
    redis.call('HSET', batch, 'attempts', attempts + 1)
  end
  return answer(0)
end
if token then
  -- its list was deleted by someone else: nothing to replay
  redis.call('DEL', batch)
end

-- The events an element holds: a registered envelope's count, else 1.
-- An id counts once; a copy of an envelope already counted is just an element.
local function event_count(element, counted)
  local id = string.match(element, '^{"aggr_envelope":"(%x+)"')
  if id == nil or counted[id] then
    return 1, nil
  end
  local n = tonumber(redis.call('HGET', registry, id))
  if n == nil then
    return 1, nil
  end
  return n, id
end

local function measure()
  return redis.call('MEMORY', 'USAGE', processing, 'SAMPLES', 0) or 0
end

local function copy(n)
  redis.call('SORT', queue, 'BY', 'nosort', 'LIMIT', 0, n, 'STORE', processing)
  return measure()
end

local extra_taken = 0
local function claim(id, n)
  redis.call('HDEL', registry, id)
  redis.call('HSET', batch, 'envelope:' .. id, n)
  extra_taken = extra_taken + n - 1
end

if have == 0 and move and waiting > 0 then
  local most = math.min(most_events, waiting)
  local counts, ids, counted, events = {}, {}, {}, 0

  -- While envelopes of aggr may be among them, the events of the elements
  -- copied from..to-1 are counted as each doubling step is copied (so an
  -- envelope of a full batch is copied alone, and no element is read into
  -- Lua beyond what fits the batch's bytes); returns how many of them the
  -- batch keeps.  The first is kept whatever it holds.
  local function count_events(from, to)
    for i = from, to - 1 do
      local n, id = event_count(redis.call('LINDEX', processing, i) or '', counted)
      if i > 0 and events + n > most_events then
        return i
      end
      counts[i + 1], ids[i + 1] = n, id
      if id then
        counted[id] = true
      end
      events = events + n
      if events >= most_events then
        return i + 1
      end
    end
    return to
  end

  local take = 1
  local bytes = copy(1)
  -- (aggr.batch_bytes is at most 'largest': an element above this cannot fit)
  if bytes > largest + largest / 4 + 4096 then
    -- larger than any batch may be (aggr never pushes one: its publishes
    -- are bounded by the same limit): the element leaves the queue as its
    -- size and first bytes; its copy in Lua is freed at once
    local element = redis.call('LINDEX', processing, 0)
    redis.call('DEL', processing)
    redis.call('HSET', batch, 'oversize', #element, 'head', string.sub(element, 1, head_bytes))
    element = nil
    collectgarbage('collect')
  else
    if registered > 0 then
      count_events(0, 1)
    end
    -- double while the batch fits (a step that does not fit is undone) and
    -- holds fewer than most_events
    while bytes <= most_bytes and take < most and events < most_events do
      local next_take = math.min(take * 2, most)
      local next_bytes = copy(next_take)
      if next_bytes > most_bytes then
        if take < next_take then
          redis.call('LTRIM', processing, 0, take - 1)
        end
        break
      end
      if registered > 0 then
        local kept = count_events(take, next_take)
        if kept < next_take then
          -- the next element would pass most_events
          redis.call('LTRIM', processing, 0, kept - 1)
          take = kept
          break
        end
      end
      take, bytes = next_take, next_bytes
    end
    if registered > 0 then
      for i = 1, take do
        if ids[i] then
          claim(ids[i], counts[i])
        end
      end
    end
  end
  redis.call('LTRIM', queue, take, -1)
  waiting = waiting - take
  have = redis.call('LLEN', processing)
end

if extra_taken > 0 then
  redis.call('DECRBY', extra_key, extra_taken)
end
if waiting == 0 then
  -- nothing waits, so no envelope either (the queue may have been deleted)
  redis.call('DEL', registry, extra_key)
end
if have == 0 and redis.call('HEXISTS', batch, 'oversize') == 0 then
  return answer(0)
end
redis.call('HSET', batch, 'token', fresh_token, 'attempts', 1)
return answer(1)
