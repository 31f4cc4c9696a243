-- Record how many batches a file was split into, and mark it merged if workers already did them all.
-- KEYS: 1 file report.  ARGV: 1 batches_total, then field, value pairs to set.
redis.call('HSET', KEYS[1], 'batches_total', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local finished = tonumber(redis.call('HGET', KEYS[1], 'batches_done') or '0')
if finished >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'merged')
  return 1
end
return 0
