-- Merge users into the store atomically; shared by batch jobs and the unary inbox drain.
-- Latest wins by ingest sequence number, so batches that workers finish out of order still leave the
-- record that was ingested last.
--
-- A batch is identified inside its file by its record range ("first:count"). A range already applied
-- (a retried job, a file resumed after a crash) is not applied again. Completion is counted per ingest
-- attempt, once per range, so a file is "merged" exactly when every batch of the current attempt has
-- been through a worker, whatever was retried or left over from an earlier attempt.
--
-- KEYS: 1 users hash, 2 rev hash (key -> seq), 3 order zset, 4 version counter, 5 file report hash,
--       6 applied-ranges set of the file, 7 inbox list, 8 counted-ranges set of this attempt,
--       9 the batch's staged users (deleted once applied, in the same step)
-- ARGV: 1 mode ("batch" or "drain"), 2 range or drain size, 3 seq base, 4 attempt, then key, json pairs
local users, rev, order, version, report, applied = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local new, updated, dup = 0, 0, 0

local function apply(key, json, seq)
  local current = redis.call('HGET', rev, key)
  if not current then
    redis.call('HSET', users, key, json)
    redis.call('ZADD', order, 0, key)
    new = new + 1
  elseif tonumber(current) <= seq then
    if redis.call('HGET', users, key) == json then
      dup = dup + 1
    else
      redis.call('HSET', users, key, json)
      updated = updated + 1
    end
  else
    dup = dup + 1
    return
  end
  redis.call('HSET', rev, key, seq)
end

local taken, skipped = 0, 0
if ARGV[1] == 'batch' then
  if redis.call('SADD', applied, ARGV[2]) == 1 then
    local base = tonumber(ARGV[3])
    for i = 5, #ARGV, 2 do
      apply(ARGV[i], ARGV[i + 1], base + (i - 5) / 2)
    end
  else
    skipped = 1
  end
  redis.call('DEL', KEYS[9])
else
  local items = redis.call('LRANGE', KEYS[7], 0, tonumber(ARGV[2]) - 1)
  for _, item in ipairs(items) do
    local tab1 = string.find(item, '\t', 1, true)
    local tab2 = string.find(item, '\t', tab1 + 1, true)
    apply(string.sub(item, tab1 + 1, tab2 - 1), string.sub(item, tab2 + 1), tonumber(string.sub(item, 1, tab1 - 1)))
  end
  taken = #items
  redis.call('LTRIM', KEYS[7], taken, -1)
end

if new + updated > 0 then
  redis.call('INCR', version)
end
redis.call('HINCRBY', report, 'new', new)
redis.call('HINCRBY', report, 'updated', updated)
redis.call('HINCRBY', report, 'duplicate', dup)
if ARGV[1] == 'batch' and redis.call('HGET', report, 'attempt') == ARGV[4] then
  redis.call('SADD', KEYS[8], ARGV[2])
  local finished = redis.call('SCARD', KEYS[8])
  redis.call('HSET', report, 'batches_done', finished)
  local total = redis.call('HGET', report, 'batches_total')
  if total and finished >= tonumber(total) and redis.call('HGET', report, 'state') ~= 'rejected' then
    redis.call('HSET', report, 'state', 'merged')
  end
end
return {new, updated, dup, taken + skipped}
