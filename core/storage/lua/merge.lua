-- Merge users into the store atomically; shared by batch jobs, the unary inbox drain and layout upgrades.
-- Latest wins by ingest sequence number, so batches that workers finish out of order still leave the
-- record that was ingested last. A stored user is "<seq>\t<array>" in the bucket hash <prefix><bucket>
-- (see core/storage/codec.py); a value is a duplicate when its array equals the stored one. The seq is digits
-- and the array is JSON (which never holds a raw TAB), so the first TAB is the only separator.
--
-- A batch is identified inside its file by its record range ("first:count", see protobufs/users.proto).
-- A range already applied (a retried job, a file resumed after a crash) is not applied again, nor is one
-- covered by the union of the ranges applied (a resume that uses another batch size): KEYS[13] keeps that
-- union as disjoint intervals "start:end" scored by start, joined as they touch, so a file merged in order
-- holds one. A range only partly covered is applied whole: its users are merged again, and latest-wins
-- merging makes that change nothing but the duplicate count. Completion
-- is counted per ingest attempt, once per range, so a file is "merged" exactly when every batch of the
-- current attempt has been through a worker, whatever was retried or left over from an earlier attempt.
--
-- Redis does not undo a script that fails half-way, so this one reads and checks everything first and
-- writes only once nothing can fail: a batch is either applied and counted whole, or not at all.
--
-- KEYS: 1 version counter, 2 file report hash, 3 applied-ranges set of the file, 4 inbox list,
--       5 counted-ranges set of this attempt, 6 the batch's staged users (deleted once applied, in the
--       same step), 7 user count, 8 dictionary epoch, 9 unreadable inbox items, 10 staged-batch index
--       (zset), 11 staged batch -> job id (hash), 12 Prometheus counters (hash, core/storage/lua/counters.lua),
--       13 union of the applied ranges of the file (zset, see above; optional for older callers),
--       14 buckets changed since the last export (set, core/storage/viewfile.py; optional likewise)
-- ARGV: 1 mode ("batch", "drain" or "load"), 2 range or drain size, 3 attempt, 4 dictionary epoch the
--       values use ("" when none), 5 bucket key prefix, then bucket, key, value triples
-- Returns {new, updated, duplicate, taken or skipped}, or {-1} when the dictionary epoch moved on.
local version, report, applied, count = KEYS[1], KEYS[2], KEYS[3], KEYS[7]
local mode, prefix = ARGV[1], ARGV[5]

-- 1. preconditions: every check and every read, no write ------------------------------------------
local expect, integer = checks('merge')
if mode ~= 'batch' and mode ~= 'drain' and mode ~= 'load' then
  return error('merge refused: unknown mode ' .. tostring(mode))
end
if (#ARGV - 5) % 3 ~= 0 then
  return error('merge refused: users must come as bucket, key, value triples')
end
expect(KEYS[8], 'string')
if ARGV[4] ~= '' and redis.call('GET', KEYS[8]) ~= ARGV[4] then
  return {-1}
end
expect(version, 'string')
integer(redis.call('GET', version), version)
expect(count, 'string')
integer(redis.call('GET', count), count)
local state, attempt, total
if mode ~= 'load' then
  expect(report, 'hash')
  local fields = redis.call('HMGET', report, 'new', 'updated', 'duplicate', 'batches_total', 'attempt', 'state')
  for i = 1, 4 do
    integer(fields[i] or nil, report)
  end
  total, attempt, state = fields[4], fields[5], fields[6]
end

-- The users to apply, as parallel arrays of bucket, key and value (no table per user: a batch has 1,000); a drain
-- reads them from the inbox, a batch takes them from ARGV.
local ub, uk, uv, taken, unreadable = {}, {}, {}, 0, {}
local function add(bucket, key, value)
  local n = #ub + 1
  ub[n], uk[n], uv[n] = bucket, key, value
end
if mode == 'drain' then
  expect(KEYS[4], 'list')
  expect(KEYS[9], 'list')
  local items = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[2]) - 1)
  taken = #items
  for _, item in ipairs(items) do
    if string.byte(item, 1) == 0x94 then
      -- a msgpack array {seq, bucket, key, array} (push_unary.lua): binary-safe, whatever the key holds
      local ok, t = pcall(cmsgpack.unpack, item)
      if ok and type(t) == 'table' and type(t[1]) == 'number' and type(t[3]) == 'string' and type(t[4]) == 'string' then
        add(string.format('%d', t[2]), t[3], string.format('%d', t[1]) .. '\t' .. t[4])
      else
        unreadable[#unreadable + 1] = item
      end
    else
      -- an item left by an earlier release: "<seq>\t<bucket>\t<key>\t<array>". The key may hold TABs
      -- (that was the bug) but the JSON array cannot, so the key runs up to the LAST TAB.
      local t1 = string.find(item, '\t', 1, true)
      local t2 = t1 and string.find(item, '\t', t1 + 1, true)
      local t3 = t2 and string.find(item, '\t[^\t]*$', t2 + 1)
      if t3 and string.match(string.sub(item, 1, t1 - 1), '^%d+$') then
        add(string.sub(item, t1 + 1, t2 - 1), string.sub(item, t2 + 1, t3 - 1),
            string.sub(item, 1, t1) .. string.sub(item, t3 + 1))
      else
        unreadable[#unreadable + 1] = item
      end
    end
  end
else
  local n = 0
  for i = 6, #ARGV, 3 do
    n = n + 1
    ub[n], uk[n], uv[n] = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  end
end

-- The batch's range as numbers, when it is "first:count" with count > 0 and exact in a double (below
-- 2^53: every real file); other spans (an ad-hoc stream's, an empty range) go by their exact text only.
local cover = KEYS[13]
local span_start, span_end
do
  local a, n = string.match(ARGV[2] or '', '^(%d+):(%d+)$')
  a, n = tonumber(a), tonumber(n)
  if cover and mode == 'batch' and a and n and n > 0 and a + n < 9007199254740992 then
    span_start, span_end = a, a + n
  end
end
local function interval(member)
  local a, b = string.match(member, '^(%d+):(%d+)$')
  return tonumber(a), tonumber(b)
end
-- Whether the union of applied ranges covers the batch's range: the interval starting at or before it.
local function covered()
  if not span_start then
    return false
  end
  local before = redis.call('ZREVRANGEBYSCORE', cover, span_start, '-inf', 'LIMIT', 0, 1)
  if #before == 0 then
    return false
  end
  local a, b = interval(before[1])
  return a ~= nil and a <= span_start and b >= span_end
end

local skipped = 0
if mode == 'batch' then
  expect(applied, 'set')
  expect(KEYS[5], 'set')
  expect(KEYS[10], 'zset')
  expect(KEYS[11], 'hash')
  if cover then
    expect(cover, 'zset')
  end
  if redis.call('SISMEMBER', applied, ARGV[2]) == 1 or covered() then
    skipped = 1
    ub, uk, uv = {}, {}, {}
  end
end

if KEYS[14] then
  expect(KEYS[14], 'set')
end

-- Decide each user against what is stored (or what this same call already decided for its key: a key always
-- comes with the same bucket, so the key alone finds it, and the bucket is compared to be sure).
local function seq_of(value)
  local tab = string.find(value, '\t', 1, true)
  local seq = tab and tonumber(string.sub(value, 1, tab - 1))
  return seq, tab
end
local decided, decided_bucket = {}, {}
local wh, wk, wv, wn = {}, {}, {}, 0  -- the writes, in order, as parallel arrays
local new, updated, dup, added = 0, 0, 0, 0
-- The buckets whose users all_users.json shows differently now (a newer copy of the same user changes nothing there).
local changed = {}
for i = 1, #ub do
  local key, value = uk[i], uv[i]
  local hash = prefix .. ub[i]
  local current = decided[key]
  if current == nil or decided_bucket[key] ~= hash then
    current = redis.call('HGET', hash, key) or false  -- WRONGTYPE here stops the script before any write
  end
  local cseq, c = false, nil
  if current then
    cseq, c = seq_of(current)
  end
  local vseq, v
  if cseq then  -- the sequence numbers are compared: read this one too
    vseq, v = seq_of(value)
  elseif not string.find(value, '^%d+\t') then
    vseq = nil
  else
    vseq = true
  end
  if not vseq then
    return error('merge refused: a value for ' .. key .. ' has no sequence number')
  end
  local write = true
  if not cseq then
    -- new, or a stored value no reader can use (damaged): the new value takes its place
    if current then updated = updated + 1 else new = new + 1; added = added + 1 end
    changed[ub[i]] = true
  elseif cseq > vseq then
    dup = dup + 1
    write = false
  elseif string.sub(current, c + 1) == string.sub(value, v + 1) then
    dup = dup + 1  -- a duplicate too is written: its newer sequence number must win later
  else
    updated = updated + 1
    changed[ub[i]] = true
  end
  if write then
    decided[key], decided_bucket[key] = value, hash
    wn = wn + 1
    wh[wn], wk[wn], wv[wn] = hash, key, value
  end
end

-- 2. writes: nothing below can fail ----------------------------------------------------------------
for i = 1, wn do
  redis.call('HSET', wh[i], wk[i], wv[i])
end
if KEYS[14] and next(changed) then
  local buckets = {}
  for bucket in pairs(changed) do
    buckets[#buckets + 1] = bucket
  end
  for i = 1, #buckets, 4000 do  -- unpack has a stack limit
    redis.call('SADD', KEYS[14], unpack(buckets, i, math.min(i + 3999, #buckets)))
  end
end
if added > 0 then
  redis.call('INCRBY', count, added)
end
if new + updated > 0 then
  if redis.call('EXISTS', version) == 1 then
    redis.call('INCR', version)
  else
    -- A cleared namespace must not count its versions again from 1: a reader that wrote version N
    -- before the reset would take the new N for the same content. Microseconds since the epoch
    -- exceed any count of merges made since an earlier start, so versions only grow.
    local now = redis.call('TIME')
    redis.call('SET', version, now[1] .. string.format('%06d', tonumber(now[2])))
  end
end
if mode == 'drain' and taken > 0 then
  redis.call('LTRIM', KEYS[4], taken, -1)
  if #unreadable > 0 then
    redis.call('RPUSH', KEYS[9], unpack(unreadable))
  end
end
if mode == 'batch' then
  redis.call('SADD', applied, ARGV[2])
  if span_start and skipped == 0 then
    -- join the range to the intervals it touches: the one that starts at or before it, the ones inside it
    local s, e = span_start, span_end
    local before = redis.call('ZREVRANGEBYSCORE', cover, s, '-inf', 'LIMIT', 0, 1)
    if #before > 0 then
      local a, b = interval(before[1])
      if a and b >= s then
        s, e = a, math.max(e, b)
        redis.call('ZREM', cover, before[1])
      end
    end
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', cover, s, e)) do
      local _, b = interval(member)
      e = math.max(e, b or e)
      redis.call('ZREM', cover, member)
    end
    redis.call('ZADD', cover, s, string.format('%d:%d', s, e))
  end
  redis.call('DEL', KEYS[6])
  redis.call('ZREM', KEYS[10], KEYS[6])
  redis.call('HDEL', KEYS[11], KEYS[6])
end
if mode == 'load' then
  return {new, updated, dup, 0}
end
redis.call('HINCRBY', report, 'new', new)
redis.call('HINCRBY', report, 'updated', updated)
redis.call('HINCRBY', report, 'duplicate', dup)
count_users(KEYS[12], new, updated, dup)
if mode == 'batch' and attempt == ARGV[3] then
  redis.call('SADD', KEYS[5], ARGV[2])
  local finished = redis.call('SCARD', KEYS[5])
  redis.call('HSET', report, 'batches_done', finished)
  if total and finished >= tonumber(total) and state ~= 'rejected' then
    redis.call('HSET', report, 'state', 'merged')
    if state ~= 'merged' then  -- a retried batch of a merged file is not a second merged file
      count_merged_file(KEYS[12], report)
    end
  end
end
return {new, updated, dup, taken + skipped}
