-- Give each string its index in the shared dictionary, adding the ones it lacks while it has room.
-- The first call makes the dictionary's epoch; indexes are only meaningful within one epoch.
-- KEYS: 1 string -> index hash, 2 index -> string list, 3 epoch.  ARGV: 1 cap, 2 epoch to make, then strings
-- Returns the epoch, then one index per string (-1: the dictionary is full, keep the string literal).
-- Every check comes before the first write.
local expect = checks('intern')
for i, kind in ipairs({'hash', 'list', 'string'}) do
  expect(KEYS[i], kind)
end
local cap = tonumber(ARGV[1])
if not cap then
  return error('intern refused: the cap must be a number')
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
end
local out = {epoch}
for i = 3, #ARGV do
  local index = redis.call('HGET', KEYS[1], ARGV[i])
  if index then
    index = tonumber(index)
  else
    index = redis.call('LLEN', KEYS[2])
    if index < cap then
      redis.call('RPUSH', KEYS[2], ARGV[i])
      redis.call('HSET', KEYS[1], ARGV[i], index)
    else
      index = -1
    end
  end
  out[#out + 1] = index
end
return out
