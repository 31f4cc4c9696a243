-- Hand one unary user to the inbox with its ingest sequence number; answer 1 when the caller must
-- enqueue a drain job (none is pending), so a burst of unary calls costs one job, not one per user.
-- KEYS: 1 inbox list, 2 sequence counter, 3 drain-pending flag, 4 dictionary epoch.
-- ARGV: 1 bucket, 2 key, 3 array (core/codec.py), 4 flag ttl (s), 5 dictionary epoch the array uses or ""
-- Answers -1, pushing nothing, when that epoch is gone (the namespace was cleared).
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return -1
end
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], seq .. '\t' .. ARGV[1] .. '\t' .. ARGV[2] .. '\t' .. ARGV[3])
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return 1
end
return 0
