-- Hand one unary user to the inbox with its ingest sequence number; answer 1 when the caller must
-- enqueue a drain job (none is pending), so a burst of unary calls costs one job, not one per user.
-- An inbox item is a msgpack array {seq, bucket, key, array}: binary-safe, so no character a user
-- sends (TAB, NUL, newline...) can be taken for a separator. merge.lua drains it.
-- KEYS: 1 inbox list, 2 sequence counter, 3 drain-pending flag, 4 dictionary epoch, 5 Prometheus counters.
-- ARGV: 1 bucket, 2 key, 3 array (core/storage/codec.py), 4 flag ttl (s), 5 dictionary epoch the array uses or ""
-- Answers -1, pushing nothing, when that epoch is gone (the namespace was cleared).
-- Every check comes before the first write, so a refusal leaves nothing behind.
local expect = checks('unary push')
local bucket, ttl = tonumber(ARGV[1]), tonumber(ARGV[4])
if not bucket or not ttl or #ARGV ~= 5 then
  return error('unary push refused: bucket and flag ttl must be numbers')
end
expect(KEYS[1], 'list')
expect(KEYS[2], 'string')
expect(KEYS[4], 'string')
local seq = redis.call('GET', KEYS[2])
if seq and not string.match(seq, '^%d+$') then
  return error('unary push refused: ' .. KEYS[2] .. ' holds ' .. seq .. ', not an integer')
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return -1
end
seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], cmsgpack.pack({seq, bucket, ARGV[2], ARGV[3]}))
redis.call('HINCRBY', KEYS[5], 'records:accepted', 1)
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ttl) then
  return 1
end
return 0
