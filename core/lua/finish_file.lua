-- Record how many batches the current attempt sent, and mark the file merged if workers already did them all.
-- KEYS: 1 file report, 2 counted-ranges set of the attempt.  ARGV: 1 batches_total, then field, value pairs.
redis.call('HSET', KEYS[1], 'batches_total', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local finished = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'batches_done', finished)
if finished >= tonumber(ARGV[1]) and redis.call('HGET', KEYS[1], 'state') ~= 'rejected' then
  redis.call('HSET', KEYS[1], 'state', 'merged')
  return 1
end
return 0
