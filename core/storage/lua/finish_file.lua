-- Record how many batches the current attempt sent, and mark the file merged if workers already did them all.
-- KEYS: 1 file report, 2 counted-ranges set of the attempt, 3 Prometheus counters (core/storage/lua/counters.lua).
-- ARGV: 1 batches_total, then field, value pairs.
-- Every check comes before the first write, so a refusal leaves the report as it was.
local expect = checks('finish')
for i, kind in ipairs({'hash', 'set'}) do
  expect(KEYS[i], kind)
end
if not string.match(ARGV[1] or '', '^%d+$') or #ARGV % 2 ~= 1 then
  return error('finish refused: batches_total must be a count, then field, value pairs')
end
local finished = redis.call('SCARD', KEYS[2])
local pairs_ = {'batches_total', ARGV[1]}
for i = 2, #ARGV do
  pairs_[#pairs_ + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('HSET', KEYS[1], 'batches_done', finished)
local state = redis.call('HGET', KEYS[1], 'state')
if finished >= tonumber(ARGV[1]) and state ~= 'rejected' then
  redis.call('HSET', KEYS[1], 'state', 'merged')
  if state ~= 'merged' then
    count_merged_file(KEYS[3], KEYS[1])
  end
  return 1
end
return 0
