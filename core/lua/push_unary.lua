-- Hand one unary user to the inbox with its ingest sequence number; answer 1 when the caller must
-- enqueue a drain job (none is pending), so a burst of unary calls costs one job, not one per user.
-- KEYS: 1 inbox list, 2 sequence counter, 3 drain-pending flag.  ARGV: 1 key, 2 json, 3 flag ttl (s)
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], seq .. '\t' .. ARGV[1] .. '\t' .. ARGV[2])
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[3])) then
  return 1
end
return 0
