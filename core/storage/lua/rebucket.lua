-- Move one bucket of the earlier layout (users:<n> of 16,384) into the current buckets, atomically, so a
-- start interrupted half-way leaves every user in exactly one place and the user count right.
-- KEYS: 1 the old bucket, 2 user count, 3 buckets changed since the last export (set)
-- ARGV: 1 current bucket key prefix, then merge key, new bucket pairs (the client hashes the keys)
-- Returns how many users moved. A user already in the current layout (merged there by a newer process)
-- keeps the value with the higher sequence number and is counted once.
local function seq_of(value)
  local tab = string.find(value, '\t', 1, true)
  return tab and tonumber(string.sub(value, 1, tab - 1)) or -1
end
local moved, twice = 0, 0
for i = 2, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value then
    local target = ARGV[1] .. ARGV[i + 1]
    local current = redis.call('HGET', target, ARGV[i])
    if current then
      twice = twice + 1
    end
    if not current or seq_of(current) < seq_of(value) then
      redis.call('HSET', target, ARGV[i], value)
    end
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('SADD', KEYS[3], ARGV[i + 1])
    moved = moved + 1
  end
end
if twice > 0 then
  redis.call('DECRBY', KEYS[2], twice)
end
return moved
