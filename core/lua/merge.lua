-- Merge users into the store atomically; shared by batch jobs, the unary inbox drain and layout upgrades.
-- Latest wins by ingest sequence number, so batches that workers finish out of order still leave the
-- record that was ingested last. A stored user is "<seq>\t<array>" in the bucket hash <prefix><bucket>
-- (see core/codec.py); a value is a duplicate when its array equals the stored one.
--
-- A batch is identified inside its file by its record range ("first:count"). A range already applied
-- (a retried job, a file resumed after a crash) is not applied again. Completion is counted per ingest
-- attempt, once per range, so a file is "merged" exactly when every batch of the current attempt has
-- been through a worker, whatever was retried or left over from an earlier attempt.
--
-- KEYS: 1 version counter, 2 file report hash, 3 applied-ranges set of the file, 4 inbox list,
--       5 counted-ranges set of this attempt, 6 the batch's staged users (deleted once applied, in the
--       same step), 7 user count, 8 dictionary epoch
-- ARGV: 1 mode ("batch", "drain" or "load"), 2 range or drain size, 3 attempt, 4 dictionary epoch the
--       values use ("" when none), 5 bucket key prefix, then bucket, key, value triples
-- Returns {new, updated, duplicate, taken or skipped}, or {-1} when the dictionary epoch moved on.
local version, report, applied, count = KEYS[1], KEYS[2], KEYS[3], KEYS[7]
local mode, prefix = ARGV[1], ARGV[5]
if ARGV[4] ~= '' and redis.call('GET', KEYS[8]) ~= ARGV[4] then
  return {-1}
end
local new, updated, dup = 0, 0, 0

local function apply(bucket, key, value)
  local hash = prefix .. bucket
  local current = redis.call('HGET', hash, key)
  if not current then
    redis.call('HSET', hash, key, value)
    redis.call('INCR', count)
    new = new + 1
    return
  end
  local c, v = string.find(current, '\t', 1, true), string.find(value, '\t', 1, true)
  if tonumber(string.sub(current, 1, c - 1)) > tonumber(string.sub(value, 1, v - 1)) then
    dup = dup + 1
    return
  end
  if string.sub(current, c + 1) == string.sub(value, v + 1) then
    dup = dup + 1
  else
    updated = updated + 1
  end
  redis.call('HSET', hash, key, value)  -- a duplicate too: its newer sequence number must win later
end

local taken, skipped = 0, 0
if mode == 'batch' then
  if redis.call('SADD', applied, ARGV[2]) == 1 then
    for i = 6, #ARGV, 3 do
      apply(ARGV[i], ARGV[i + 1], ARGV[i + 2])
    end
  else
    skipped = 1
  end
  redis.call('DEL', KEYS[6])
elseif mode == 'drain' then
  -- inbox items are "<seq>\t<bucket>\t<key>\t<array>"
  local items = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[2]) - 1)
  for _, item in ipairs(items) do
    local t1 = string.find(item, '\t', 1, true)
    local t2 = string.find(item, '\t', t1 + 1, true)
    local t3 = string.find(item, '\t', t2 + 1, true)
    apply(string.sub(item, t1 + 1, t2 - 1), string.sub(item, t2 + 1, t3 - 1),
          string.sub(item, 1, t1) .. string.sub(item, t3 + 1))
  end
  taken = #items
  redis.call('LTRIM', KEYS[4], taken, -1)
else
  for i = 6, #ARGV, 3 do
    apply(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  end
end

if new + updated > 0 then
  redis.call('INCR', version)
end
if mode == 'load' then
  return {new, updated, dup, 0}
end
redis.call('HINCRBY', report, 'new', new)
redis.call('HINCRBY', report, 'updated', updated)
redis.call('HINCRBY', report, 'duplicate', dup)
if mode == 'batch' and redis.call('HGET', report, 'attempt') == ARGV[3] then
  redis.call('SADD', KEYS[5], ARGV[2])
  local finished = redis.call('SCARD', KEYS[5])
  redis.call('HSET', report, 'batches_done', finished)
  local total = redis.call('HGET', report, 'batches_total')
  if total and finished >= tonumber(total) and redis.call('HGET', report, 'state') ~= 'rejected' then
    redis.call('HSET', report, 'state', 'merged')
  end
end
return {new, updated, dup, taken + skipped}
